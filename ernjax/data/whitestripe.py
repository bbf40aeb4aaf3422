"""WhiteStripe intensity normalization (Shinohara et al. 2014), by `intensity-normalization`.

WhiteStripe puts every subject's image on the scale of its own normal-appearing white matter
(NAWM), the tissue least touched by disease and present in every brain: find the white-matter
mode of the smoothed histogram of the brain's intensities, take the "stripe" of brain voxels
whose quantile lies within `WIDTH` (0.05) of the mode's quantile, and return (x - mean) / std of
that stripe. The stripe then has mean 0 and standard deviation 1 in every subject, which a
whole-brain z-score does not give when a large lesion or oedema shifts the brain's statistics.

The field's maintained implementation, `intensity-normalization` (J. Reinhold; pinned in
setup.py), does the fitting: `WhiteStripeNormalizer`, a Gaussian KDE (Scott's bandwidth) on an
80-point grid, and a rule for the white-matter mode that depends on the contrast:

  t1     the last (highest-intensity) local maximum, after dropping the top 4% of intensities:
         white matter is the brightest tissue on T1-weighted images;
  t2     the largest (tallest) peak: there white matter is darker than grey matter and CSF,
  flair  so not the last peak.

So every channel's contrast must be known: `CONTRASTS` maps the modality names ernjax uses
(`config.data.modalities`' keys) to the package's. A post-contrast T1 (t1c) is T1-weighted and
takes the T1 rule: the package has no contrast-enhanced modality, Shin 2021 normalized its
contrast-enhanced T1WI with WhiteStripe, and what gadolinium brightens (enhancing tumour,
vessels, dura) is a small bright tail, partly above the 96th percentile that the T1 rule drops
before looking for the last peak. Measured on the BraTS 2018 T1c scans of ../shared/data (21
cases at 2 mm, 2 of them also at 1 mm; all but the one below): the T1c stripe's voxels lie at
the T1's own stripe (their median T1 WhiteStripe value is -0.3, range -3.3 to 5.9, where the
T1's brain spans about -90 to 140 and its 35th percentile is -14), and they hold a median 0.2%
(at most 3.8%) enhancing tumour.

Intensities quantized to a few hundred levels can leave no voxel strictly between the stripe's
bounds (the package's rule): one of those T1c scans (206 distinct values in its non-zero region)
has none. `fit` then raises `StripeError`, which the callers word with the subject and the file.

The fit runs on the region's voxels that hold signal (non-zero: `normalize`), passed to the
package as a 1-D image with an all-True mask: the package's own masked fit compares the whole
masked volume, zeros outside the brain included, with the stripe's bounds, which counts the
background as white matter when the lower bound is negative (an image already z-scored). On
positive MRI both give the same stripe.
"""

import dataclasses

import numpy as np

WIDTH = 0.05  # the stripe: +/- this much quantile around the mode's (the package's default)
# ernjax modality name (lower case) -> the package's modality, i.e. its rule for the WM mode.
# t1n / t2w / t2f are BraTS 2023's names; t1w, t2w those of BIDS; t1ce / t1gd other common ones.
CONTRASTS = {
    "t1": "t1",
    "t1n": "t1",
    "t1w": "t1",
    "t1c": "t1",
    "t1ce": "t1",
    "t1gd": "t1",
    "t2": "t2",
    "t2w": "t2",
    "flair": "flair",
    "t2f": "flair",
}


class StripeError(ValueError):
    """No white stripe could be fitted (too few or constant voxels); the caller names the file."""


@dataclasses.dataclass(frozen=True)
class Stripe:
    """A fitted white stripe.

    Attributes:
      mean, std: the stripe's intensity mean and standard deviation (what normalizes).
      low, high: the stripe's intensity bounds (the quantiles at the mode's quantile -/+ width;
        the stripe is the voxels strictly between them).
      fraction: the fraction of the region's voxels in the stripe (about 2 x width).
    """

    mean: float
    std: float
    low: float
    high: float
    fraction: float


def contrast_of(modality: str) -> str | None:
    """The package's modality for an ernjax modality name ("t1c" -> "t1"), None if unknown."""
    return CONTRASTS.get(str(modality).lower())


def fit(values: np.ndarray, contrast: str, width: float = WIDTH) -> tuple[Stripe, np.ndarray]:
    """Fits WhiteStripe to the intensities of a region (the package's `WhiteStripeNormalizer`).

    Args:
      values: the region's voxel intensities (any shape; flattened).
      contrast: "t1", "t2" or "flair" (the package's modality names; see `CONTRASTS`).
      width: the stripe's half-width in quantile.

    Returns:
      (the Stripe, a boolean array over the flattened values: True in the stripe).

    Raises:
      StripeError: fewer than 2 distinct values, or a stripe of zero spread.
      KeyError: an unknown contrast.
    """
    # imported here: the package (and scipy.signal, which it loads) costs ~1 s to import, and
    # only runs that choose WhiteStripe need it
    from intensity_normalization import Modality, WhiteStripeNormalizer
    from intensity_normalization.adapters.images import NumpyImageAdapter
    from intensity_normalization.domain.exceptions import NormalizationError

    modality = {"t1": Modality.T1, "t2": Modality.T2, "flair": Modality.FLAIR}[contrast]
    flat = np.asarray(values, np.float32).ravel()
    if flat.size < 2 or flat.min() == flat.max():
        raise StripeError(
            f"WhiteStripe needs a brain with varied intensities; the region has {flat.size} "
            "voxels" + (f", all equal to {flat[0]:.4g}" if flat.size else "")
        )
    normalizer = WhiteStripeNormalizer(width=width, modality=modality)
    try:
        normalizer.fit(NumpyImageAdapter(flat), NumpyImageAdapter(np.ones(flat.shape, np.float32)))
    except NormalizationError as e:
        levels = np.unique(flat).size
        raise StripeError(
            f"WhiteStripe ({contrast} rule) found no white-matter stripe ({e.__cause__ or e}); "
            f"the brain holds {levels} distinct intensities"
            + (f", too few for a stripe of +/-{width} quantile" if levels < 1000 else "")
            + ": normalize this cohort with zscore or minmax, or leave this subject out"
        ) from e
    inside = np.asarray(normalizer.whitestripe_mask, bool)
    stripe = flat[inside]
    return Stripe(
        mean=float(normalizer.mean),
        std=float(normalizer.std),
        low=float(stripe.min()),
        high=float(stripe.max()),
        fraction=float(inside.mean()),
    ), inside


def normalize(data: np.ndarray, region: np.ndarray, modality: str) -> np.ndarray:
    """WhiteStripe-normalizes `data` from the stripe of `region`'s voxels; zero outside it.

    The fit leaves out the region's voxels that are exactly 0 in `data`: no signal, not tissue
    (the region is often another modality's brain, and a FLAIR whose slices cover less of the
    head has a third of the T1's brain at 0 in one BraTS case: its largest peak would be 0).

    Args:
      data: the image array.
      region: boolean mask of the brain (the voxels whose histogram is fitted, less zeros).
      modality: the channel's ernjax modality name (mapped by `CONTRASTS`).

    Returns:
      float32 (data - stripe mean) / stripe std inside `region` (its zeros too), 0 outside
      (all 0 for a region without signal, as the other methods for an empty one).

    Raises:
      StripeError: no stripe could be fitted (see `fit`).
      ValueError: a modality name `CONTRASTS` does not know (the config check refuses it first).
    """
    contrast = contrast_of(modality)
    if contrast is None:
        raise ValueError(f"WhiteStripe does not know the contrast of modality {modality!r}")
    out = np.zeros(data.shape, np.float32)
    signal = region & (data != 0)
    if not signal.any():
        return out
    stripe, _ = fit(data[signal], contrast)
    out[region] = (data[region] - stripe.mean) / stripe.std
    return out
