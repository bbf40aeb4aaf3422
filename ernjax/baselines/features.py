"""Radiomics features inside a lesion mask, following the IBSI definitions.

The Image Biomarker Standardisation Initiative (Zwanenburg et al., arXiv 1612.07003; "IBSI" below)
defines each feature; the names here are those of its digital-phantom reference table, and
tests/test_baselines_features.py checks them against IBSI's reference values. Families:

  shape      morphology of the mask in mm (3D: IBSI's mesh-based set; 2D slices: their planar
             analogues, which IBSI does not define)
  intensity  intensity-based statistics of the raw voxel values
  histogram  intensity-histogram features of the discretised values
  glcm       grey level co-occurrence matrix features, distance 1, symmetric, one matrix merged
             over the 13 directions of a volume ("3D:mrg") or the 4 in-plane ones of a slice

Written on numpy, scipy and scikit-image (marching cubes / squares). pyradiomics, the field's usual
extractor, is not a dependency: its newest source archive (3.1.0) does not install (its metadata
says 3.0.1a1), 3.0.1 builds only without build isolation, and its GLCM features average the
directions where IBSI's "3D:mrg" (used here) merges their matrices.

Degenerate regions never give NaN (a one-voxel mask is a valid input): a zero variance gives
skewness and kurtosis 0 (IBSI's own rule for the histogram); a zero mean gives a coefficient of
variation 0, and a zero P75 + P25 a quartile coefficient of dispersion 0; no voxel between P10 and
P90 (two voxels, say: the percentiles interpolate) gives a robust mean absolute deviation 0; a
point-like mask (all PCA eigenvalues 0) has elongation and flatness 1; a GLCM with no neighbouring
pair inside the mask is replaced by each voxel paired with itself (the matrix of a homogeneous
region); a GLCM with a single grey level has correlation 1 and information correlation 1 equal
to 0.
"""

import dataclasses
import math

import numpy as np
from scipy import spatial
from skimage import measure

# one direction of each opposite pair within Chebyshev distance 1 (IBSI GLCM section)
_DIRECTIONS_3D = tuple(
    (a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) > (0, 0, 0)
)
_DIRECTIONS_2D = ((0, 1), (1, -1), (1, 0), (1, 1))
# A GLCM holds N_g^2 cells and its features a few arrays of that size: 1024 levels is 8 MB each,
# where a bin width far below the intensity range would ask for gigabytes.
MAX_GREY_LEVELS = 1024


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
    """How intensities are discretised before the histogram and GLCM features.

    The default is IBSI's fixed bin number (FBN) with 32 bins: the IBSI manual (section
    "Intensity discretisation", recommendations table) recommends FBN for arbitrary intensity
    units such as MRI, where no re-segmentation range exists, and marks fixed bin size (FBS) as not
    recommended there; ernjax's MRI is min-max or z-score normalised per subject, still arbitrary
    units. 32 is within the 32-64 grey levels the manual suggests for GLCM features.

    Attributes:
      bin_count: FBN bins N_g, or None.
      bin_width: FBS bin width w_b (intensity units), or None. At most one of the two may be set;
        with neither, the values must already be integer grey levels >= 1 and are used as they
        are (IBSI's digital phantom is defined that way).
      bin_min: FBS lower bound X_gl,min; None uses the ROI minimum (IBSI recommends a fixed value
        shared by all subjects when one is meaningful).
      glcm_distance: Chebyshev distance between co-occurring voxels (IBSI default 1).
    """

    bin_count: int | None = 32
    bin_width: float | None = None
    bin_min: float | None = None
    glcm_distance: int = 1

    def __post_init__(self):
        if self.bin_count is not None and self.bin_width is not None:
            raise ValueError("FeatureSettings: set bin_count or bin_width, not both")
        if self.bin_count is not None and not 1 <= self.bin_count <= MAX_GREY_LEVELS:
            raise ValueError(
                f"FeatureSettings: bin_count must be 1..{MAX_GREY_LEVELS}, got {self.bin_count}"
            )
        if self.bin_width is not None and not self.bin_width > 0:
            raise ValueError(f"FeatureSettings: bin_width must be > 0, got {self.bin_width}")
        if self.glcm_distance < 1:
            raise ValueError(
                f"FeatureSettings: glcm_distance must be >= 1, got {self.glcm_distance}"
            )


def discretise(values: np.ndarray, settings: FeatureSettings) -> tuple[np.ndarray, int]:
    """Discretises ROI intensities into grey levels 1..N_g (IBSI "Intensity discretisation").

    Args:
      values: the intensities of the ROI voxels (any shape; only the ROI's values).
      settings: the discretisation (FBN, FBS or none).

    Returns:
      (levels, n_levels): integer grey levels of the same shape, and the number of grey levels
      N_g that the histogram and GLCM span (the bin count for FBN, the highest level otherwise).
      Under FBN a flat ROI (maximum = minimum) is all N_g, by IBSI's rule for the maximum.
    """
    levels, n_levels = _discretise(np.asarray(values, dtype=np.float64), settings)
    if n_levels > MAX_GREY_LEVELS:
        raise ValueError(
            f"discretise: {n_levels} grey levels, at most {MAX_GREY_LEVELS}: widen bin_width "
            f"(the ROI spans {float(np.min(values))}..{float(np.max(values))})"
        )
    return levels, n_levels


def _discretise(x: np.ndarray, settings: FeatureSettings) -> tuple[np.ndarray, int]:
    """`discretise` before its check on the number of levels."""
    if x.size == 0:
        raise ValueError("discretise: no values (empty mask)")
    if settings.bin_count is not None:
        lo, hi = x.min(), x.max()
        n = settings.bin_count
        # IBSI FBN: floor(N_g (x - min) / (max - min)) + 1, and the maximum itself goes to N_g
        scaled = np.floor(n * (x - lo) / (hi - lo)) + 1 if hi > lo else np.full(x.shape, n)
        # the clip also catches an x just below the maximum that rounding lifts to N_g + 1
        return np.where(x >= hi, n, np.minimum(scaled, n)).astype(np.int64), n
    if settings.bin_width is not None:
        lo = x.min() if settings.bin_min is None else settings.bin_min
        if x.min() < lo:
            raise ValueError(f"discretise: values below bin_min {lo} (re-segment them first)")
        levels = (np.floor((x - lo) / settings.bin_width) + 1).astype(np.int64)
        return levels, int(levels.max())
    if x.min() < 1 or not np.array_equal(x, np.round(x)):
        raise ValueError("discretise: without bin_count or bin_width, values must be integers >= 1")
    levels = x.astype(np.int64)
    return levels, int(levels.max())


def _moments(x: np.ndarray) -> tuple[float, float, float, float]:
    """Mean, variance (no bias correction) and the IBSI skewness and excess kurtosis of x."""
    mean = float(x.mean())
    centred = x - mean
    var = float(np.mean(centred**2))
    if var <= 0:
        return mean, 0.0, 0.0, 0.0  # IBSI: skewness and kurtosis are 0 when the variance is 0
    return mean, var, float(np.mean(centred**3) / var**1.5), float(np.mean(centred**4) / var**2 - 3)


def _statistics(x: np.ndarray) -> dict[str, float]:
    """The statistics shared by the intensity and the histogram families (IBSI 3.4 and 3.5)."""
    mean, var, skew, kurt = _moments(x)
    p10, p25, median, p75, p90 = np.percentile(x, [10, 25, 50, 75, 90])
    central = x[(x >= p10) & (x <= p90)]
    std = math.sqrt(var)
    return {
        "mean": mean,
        "variance": var,
        "skewness": skew,
        "kurtosis_excess": kurt,
        "median": float(median),
        "minimum": float(x.min()),
        "percentile_10": float(p10),
        "percentile_90": float(p90),
        "maximum": float(x.max()),
        "interquartile_range": float(p75 - p25),
        "range": float(x.max() - x.min()),
        "mean_absolute_deviation": float(np.mean(np.abs(x - mean))),
        "robust_mean_absolute_deviation": (
            float(np.mean(np.abs(central - central.mean()))) if central.size else 0.0
        ),
        "median_absolute_deviation": float(np.mean(np.abs(x - median))),
        "coefficient_of_variation": std / mean if mean != 0 else 0.0,
        "quartile_coefficient_of_dispersion": (
            float((p75 - p25) / (p75 + p25)) if p75 + p25 != 0 else 0.0
        ),
    }


def intensity(values: np.ndarray) -> dict[str, float]:
    """Intensity-based statistical features of the raw ROI intensities (IBSI section 3.4).

    Args:
      values: the intensities of the ROI voxels, not discretised.

    Returns:
      {feature: value}: mean, variance, skewness, kurtosis_excess, median, minimum,
      percentile_10, percentile_90, maximum, interquartile_range, range, mean_absolute_deviation,
      robust_mean_absolute_deviation (inside P10..P90), median_absolute_deviation (mean distance to
      the median, as IBSI defines it), coefficient_of_variation, quartile_coefficient_of_dispersion,
      energy (sum of squares) and root_mean_square.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("intensity: no values (empty mask)")
    out = _statistics(x)
    out["energy"] = float(np.sum(x**2))
    out["root_mean_square"] = math.sqrt(out["energy"] / x.size)
    return out


def _entropy(p: np.ndarray) -> float:
    """Shannon entropy in bits of the probabilities p (zeros ignored)."""
    q = p[p > 0]
    return 0.0 - float(np.sum(q * np.log2(q)))  # 0.0 - 0.0 is 0.0 where -0.0 would print


def _mode(counts: np.ndarray, mean: float) -> float:
    """The most frequent level; ties go to the level nearest the mean, then the lower (IBSI)."""
    tied = np.flatnonzero(counts == counts.max()) + 1
    return float(tied[np.argmin(np.abs(tied - mean))])  # argmin keeps the first, i.e. lower, one


def histogram(levels: np.ndarray, n_levels: int) -> dict[str, float]:
    """Intensity-histogram features of discretised grey levels (IBSI section 3.5).

    Args:
      levels: the grey levels (1..n_levels) of the ROI voxels, as `discretise` returns them.
      n_levels: N_g, the number of histogram bins (bins with no voxel count too).

    Returns:
      {feature: value}: the statistics of `intensity` (without energy and root_mean_square) on the
      grey levels, plus mode, entropy (bits), uniformity, and the maximum and minimum histogram
      gradient with the grey levels where they occur.
    """
    x = np.asarray(levels, dtype=np.int64).ravel()
    if x.size == 0:
        raise ValueError("histogram: no values (empty mask)")
    counts = np.bincount(x - 1, minlength=n_levels)[:n_levels].astype(np.float64)
    p = counts / x.size
    out = _statistics(x.astype(np.float64))
    out["mode"] = _mode(counts, out["mean"])
    out["entropy"] = _entropy(p)
    out["uniformity"] = float(np.sum(p**2))
    # IBSI: central differences inside, one-sided at both ends, on the full (non-sparse) histogram
    grad = np.gradient(counts) if n_levels > 1 else np.zeros(1)
    out["maximum_histogram_gradient"] = float(grad.max())
    out["maximum_histogram_gradient_grey_level"] = float(np.argmax(grad) + 1)
    out["minimum_histogram_gradient"] = float(grad.min())
    out["minimum_histogram_gradient_grey_level"] = float(np.argmin(grad) + 1)
    return out


def _pairs(shape: tuple[int, ...], offset: tuple[int, ...]) -> tuple[tuple, tuple]:
    """Index slices (a, b) such that array[b] is array[a]'s neighbour at `offset`."""
    first, second = [], []
    for n, d in zip(shape, offset, strict=True):
        length = max(0, n - abs(d))  # an offset longer than the axis pairs nothing
        first.append(slice(max(0, -d), max(0, -d) + length))
        second.append(slice(max(0, d), max(0, d) + length))
    return tuple(first), tuple(second)


def cooccurrence(
    image_discretised: np.ndarray, mask: np.ndarray, n_levels: int, offsets
) -> np.ndarray:
    """Symmetric grey level co-occurrence counts, merged (summed) over `offsets`.

    Args:
      image_discretised: integer grey levels 1..n_levels (values outside the mask are ignored).
      mask: boolean ROI of the same shape; a pair counts only when both voxels are inside.
      n_levels: N_g, the matrix size.
      offsets: direction vectors (one of each opposite pair), already scaled by the distance.

    Returns:
      (n_levels, n_levels) int64 counts M; M[i-1, j-1] counts level i next to level j, with each
      pair counted in both orders (IBSI: M = M_m + M_m^T).
    """
    levels = np.where(mask, image_discretised, 0).astype(np.int64)
    counts = np.zeros(n_levels * n_levels, dtype=np.int64)
    for offset in offsets:
        a, b = _pairs(levels.shape, offset)
        first, second = levels[a], levels[b]
        both = (first > 0) & (second > 0)
        pair = (first[both] - 1) * n_levels + (second[both] - 1)
        counts += np.bincount(pair, minlength=n_levels * n_levels)
    m = counts.reshape(n_levels, n_levels)
    return m + m.T


def _glcm_features(counts: np.ndarray) -> dict[str, float]:
    """IBSI GLCM features (section 3.6) of one symmetric count matrix with a positive sum."""
    ng = counts.shape[0]
    p = counts / counts.sum()
    g = np.arange(1, ng + 1, dtype=np.float64)
    i, j = g[:, None], g[None, :]
    p_i = p.sum(axis=1)  # = column marginal, the matrix being symmetric
    mu = float(np.sum(g * p_i))
    var = float(np.sum((g - mu) ** 2 * p_i))
    k_diff = np.arange(ng, dtype=np.float64)
    k_sum = np.arange(2, 2 * ng + 1, dtype=np.float64)
    diff = np.abs(i - j).astype(np.int64)
    p_diff = np.bincount(diff.ravel(), weights=p.ravel(), minlength=ng)
    p_sum = np.bincount(
        (i + j - 2).astype(np.int64).ravel(), weights=p.ravel(), minlength=2 * ng - 1
    )
    diff_avg = float(np.sum(k_diff * p_diff))
    sum_avg = float(np.sum(k_sum * p_sum))
    hxy, hx = _entropy(p), _entropy(p_i)
    outer = np.outer(p_i, p_i)
    hxy1 = float(-np.sum(p[p > 0] * np.log2(outer[p > 0])))
    hxy2 = _entropy(outer)
    cluster = i + j - 2 * mu
    return {
        "joint_maximum": float(p.max()),
        "joint_average": mu,
        "joint_variance": var,
        "joint_entropy": hxy,
        "difference_average": diff_avg,
        "difference_variance": float(np.sum((k_diff - diff_avg) ** 2 * p_diff)),
        "difference_entropy": _entropy(p_diff),
        "sum_average": sum_avg,
        "sum_variance": float(np.sum((k_sum - sum_avg) ** 2 * p_sum)),
        "sum_entropy": _entropy(p_sum),
        "angular_second_moment": float(np.sum(p**2)),
        "contrast": float(np.sum((i - j) ** 2 * p)),
        "dissimilarity": float(np.sum(np.abs(i - j) * p)),
        "inverse_difference": float(np.sum(p_diff / (1 + k_diff))),
        "inverse_difference_normalised": float(np.sum(p_diff / (1 + k_diff / ng))),
        "inverse_difference_moment": float(np.sum(p_diff / (1 + k_diff**2))),
        "inverse_difference_moment_normalised": float(np.sum(p_diff / (1 + (k_diff / ng) ** 2))),
        "inverse_variance": float(np.sum(p_diff[1:] / k_diff[1:] ** 2)),
        # a single grey level leaves the correlation 0/0: call it perfect (pyradiomics does too)
        "correlation": float(np.sum((i - mu) * (j - mu) * p) / var) if var > 0 else 1.0,
        "autocorrelation": float(np.sum(i * j * p)),
        "cluster_tendency": float(np.sum(cluster**2 * p)),
        "cluster_shade": float(np.sum(cluster**3 * p)),
        "cluster_prominence": float(np.sum(cluster**4 * p)),
        "information_correlation_1": (hxy - hxy1) / hx if hx > 0 else 0.0,
        "information_correlation_2": math.sqrt(max(0.0, 1 - math.exp(-2 * (hxy2 - hxy)))),
    }


def glcm(
    image_discretised: np.ndarray,
    mask: np.ndarray,
    n_levels: int,
    *,
    dims: int = 3,
    distance: int = 1,
) -> dict[str, float]:
    """GLCM features from one matrix merged over all directions (IBSI "3D:mrg" or per-slice 2D).

    Args:
      image_discretised: integer grey levels 1..n_levels inside the mask, (D, H, W) or (H, W).
      mask: boolean ROI of the same shape.
      n_levels: N_g, the number of grey levels of the discretisation.
      dims: 3 for a volume (13 directions), 2 for one slice (4 in-plane directions).
      distance: Chebyshev distance between neighbours.

    Returns:
      {feature: value}: joint_maximum, joint_average, joint_variance, joint_entropy,
      difference_average/_variance/_entropy, sum_average/_variance/_entropy,
      angular_second_moment, contrast, dissimilarity, inverse_difference(_normalised),
      inverse_difference_moment(_normalised), inverse_variance, correlation, autocorrelation,
      cluster_tendency/_shade/_prominence, information_correlation_1 and _2.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != dims:
        raise ValueError(f"glcm: dims={dims} needs a {dims}D mask, got shape {mask.shape}")
    if not mask.any():
        raise ValueError("glcm: empty mask")
    directions = _DIRECTIONS_3D if dims == 3 else _DIRECTIONS_2D
    offsets = [tuple(distance * c for c in d) for d in directions]
    counts = cooccurrence(image_discretised, mask, n_levels, offsets)
    if counts.sum() == 0:
        # no two ROI voxels are neighbours: pair each voxel with itself (a homogeneous texture)
        levels = np.asarray(image_discretised)[mask].astype(np.int64)
        counts = np.diag(np.bincount(levels - 1, minlength=n_levels)[:n_levels])
    return _glcm_features(counts)


def _max_distance(points: np.ndarray) -> float:
    """The largest distance between two of the points, in chunks to bound memory."""
    if len(points) > 3:
        try:
            points = points[spatial.ConvexHull(points).vertices]  # the farthest pair is on it
        except spatial.QhullError:
            pass  # flat or collinear point sets: keep them all
    best = 0.0
    for start in range(0, len(points), 2048):
        d = spatial.distance.cdist(points[start : start + 2048], points)
        best = max(best, float(d.max()))
    return best


def _pca(mask: np.ndarray, spacing: np.ndarray) -> dict[str, float]:
    """Axis lengths (4 sqrt(eigenvalue)) of the voxel centres in mm, elongation and flatness."""
    centres = np.argwhere(mask) * spacing
    cov = np.atleast_2d(np.cov(centres, rowvar=False)) if len(centres) > 1 else None
    eig = np.zeros(mask.ndim) if cov is None else np.clip(np.linalg.eigvalsh(cov), 0, None)
    eig = eig[::-1]  # major first
    names = ("major", "minor", "least")[: mask.ndim]
    out = {f"{n}_axis_length_mm": 4 * math.sqrt(e) for n, e in zip(names, eig, strict=True)}
    ratio = np.sqrt(eig / eig[0]) if eig[0] > 0 else np.ones(mask.ndim)  # a point: no direction
    out["elongation"] = float(ratio[1])
    if mask.ndim == 3:
        out["flatness"] = float(ratio[2])
    return out


def _box(mask: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of the mask's voxels."""
    return tuple(slice(int(ax.min()), int(ax.max()) + 1) for ax in np.nonzero(mask))


def _crop(mask: np.ndarray) -> np.ndarray:
    """The mask cropped to its bounding box and padded by one empty voxel on every side."""
    return np.pad(mask[_box(mask)], 1)


def _checked(mask: np.ndarray, spacing_mm, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    mask = np.asarray(mask, dtype=bool)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if mask.ndim != ndim or spacing.shape != (ndim,):
        raise ValueError(f"needs a {ndim}D mask and {ndim} spacings, got {mask.shape}, {spacing}")
    if not mask.any():
        raise ValueError("empty mask")
    return mask, spacing


def morphology(mask: np.ndarray, spacing_mm) -> dict[str, float]:
    """IBSI morphological features of a 3D mask (section 3.1), in mm, mm^2 and mm^3.

    The surface is the marching-cubes mesh (scikit-image, Lewiner) at level 0.5 of the mask padded
    with empty voxels, so a mask touching its array edge is still closed.

    Args:
      mask: boolean (D, H, W) ROI.
      spacing_mm: voxel size along the three axes.

    Returns:
      {feature: value}: volume_mm3 (mesh), volume_voxel_counting_mm3, surface_area_mm2,
      surface_to_volume_ratio, compactness_1, compactness_2, spherical_disproportion, sphericity,
      asphericity, maximum_3d_diameter_mm (between mesh vertices), major/minor/least_axis_length_mm
      (PCA of the voxel centres), elongation and flatness.
    """
    mask, spacing = _checked(mask, spacing_mm, 3)
    verts, faces, _, _ = measure.marching_cubes(
        _crop(mask).astype(np.float32), 0.5, spacing=spacing
    )
    verts = verts.astype(np.float64)  # marching_cubes returns float32
    a, b, c = (verts[faces[:, k]] for k in range(3))
    volume = abs(float(np.sum(a * np.cross(b, c))) / 6)  # signed tetrahedra against the origin
    area = float(np.sum(np.linalg.norm(np.cross(b - a, c - a), axis=1)) / 2)
    sphere = (36 * math.pi * volume**2) ** (1 / 3)  # area of the sphere of the same volume
    out = {
        "volume_mm3": volume,
        "volume_voxel_counting_mm3": float(mask.sum() * np.prod(spacing)),
        "surface_area_mm2": area,
        "surface_to_volume_ratio": area / volume,
        "compactness_1": volume / (math.sqrt(math.pi) * area**1.5),
        "compactness_2": 36 * math.pi * volume**2 / area**3,
        "spherical_disproportion": area / sphere,
        "sphericity": sphere / area,
        "asphericity": (area / sphere) - 1,
        "maximum_3d_diameter_mm": _max_distance(verts),
    }
    out.update(_pca(mask, spacing))
    return out


def morphology_2d(mask: np.ndarray, spacing_mm) -> dict[str, float]:
    """Planar shape features of one slice's mask, in mm and mm^2 (2D analogues of IBSI's 3D set).

    The outline is the marching-squares contour (scikit-image) at level 0.5 of the padded mask;
    holes count against the area.

    Args:
      mask: boolean (H, W) ROI.
      spacing_mm: pixel size along the two axes.

    Returns:
      {feature: value}: area_mm2 (inside the contour), area_pixel_counting_mm2, perimeter_mm,
      perimeter_to_area_ratio, circularity (4 pi area / perimeter^2, 1 for a disc),
      maximum_2d_diameter_mm (between contour vertices), major/minor_axis_length_mm (PCA of the
      pixel centres) and elongation.
    """
    mask, spacing = _checked(mask, spacing_mm, 2)
    contours = measure.find_contours(
        _crop(mask).astype(np.float32), 0.5, positive_orientation="high"
    )
    signed, perimeter = 0.0, 0.0
    for contour in contours:
        xy = contour * spacing
        x, y = xy[:, 0], xy[:, 1]
        # shoelace: islands and holes wind oppositely, so their signed areas subtract
        signed += float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1])) / 2
        perimeter += float(np.sum(np.linalg.norm(np.diff(xy, axis=0), axis=1)))
    area = abs(signed)
    out = {
        "area_mm2": area,
        "area_pixel_counting_mm2": float(mask.sum() * np.prod(spacing)),
        "perimeter_mm": perimeter,
        "perimeter_to_area_ratio": perimeter / area,
        "circularity": 4 * math.pi * area / perimeter**2,
        "maximum_2d_diameter_mm": _max_distance(np.concatenate(contours) * spacing),
    }
    out.update(_pca(mask, spacing))
    return out


def extract(
    images: dict[str, np.ndarray],
    mask: np.ndarray,
    spacing_mm,
    settings: FeatureSettings = FeatureSettings(),
    *,
    dims: int = 3,
) -> dict[str, float]:
    """All features of one subject (dims=3) or one slice (dims=2), as one flat dictionary.

    Args:
      images: {modality: array} on one grid, (D, H, W) for dims=3 or (H, W) for dims=2.
      mask: boolean ROI (the lesion mask) on that grid.
      spacing_mm: voxel (or pixel) size in mm along each axis of the grid.
      settings: the discretisation for the histogram and GLCM families.
      dims: 3 for a volume (3D shape, GLCM merged over 13 directions), 2 for a slice (planar shape,
        GLCM merged over the 4 in-plane directions).

    Returns:
      {"shape.<feature>": value} once, and {"<modality>.<family>.<feature>": value} for each
      modality and the families intensity, histogram and glcm; keys in a fixed order, values
      finite floats.
    """
    if dims not in (2, 3):
        raise ValueError(f"extract: dims must be 2 or 3, got {dims}")
    mask = np.asarray(mask, dtype=bool)
    grid_shape = mask.shape
    shape = morphology(mask, spacing_mm) if dims == 3 else morphology_2d(mask, spacing_mm)
    out = {f"shape.{k}": v for k, v in shape.items()}
    box = _box(mask)  # the texture of the mask's bounding box only: far less to scan
    mask = mask[box]
    for name, image in images.items():
        image = np.asarray(image)
        if image.shape != grid_shape:
            raise ValueError(f"extract: {name} has shape {image.shape}, the mask {grid_shape}")
        image = image[box]
        values = image[mask]
        if not np.isfinite(values).all():
            raise ValueError(f"extract: {name} has non-finite values inside the mask")
        levels, n_levels = discretise(values, settings)
        grid = np.zeros(mask.shape, dtype=np.int64)
        grid[mask] = levels
        families = {
            "intensity": intensity(values),
            "histogram": histogram(levels, n_levels),
            "glcm": glcm(grid, mask, n_levels, dims=dims, distance=settings.glcm_distance),
        }
        for family, features in families.items():
            out.update({f"{name}.{family}.{k}": v for k, v in features.items()})
    return out
