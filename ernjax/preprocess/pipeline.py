"""One subject through the preprocessing steps, each a pure function on images with affines.

The steps run in a fixed order, each optional (`settings.steps`):

  reorient    RAS+ axes (no interpolation)
  n4          N4 bias-field correction of every modality
  coregister  rigid (6 DOF) MI registration of every modality to the reference, resampled onto
              the reference grid (Gao 2020: T1; Ying 2025: T1ce > T1 > T2 > FLAIR)
  mni         affine (12 DOF) registration of the reference to nilearn's MNI152 template and
              resampling of every modality into template space
  skullstrip  the template brain mask carried back through that registration ("atlas"), or a
              registered learned method
  normalize   intensities inside the brain: min-max to [0, 1], z-score, or WhiteStripe
              (Shin 2021; each modality by its contrast, `ernjax.data.whitestripe`)
  crop        to the brain's bounding box (plus a margin)

Registration results are world-space transforms, so an image is only resampled where a step
puts it on a new grid, and a lesion mask follows its modality with nearest-neighbour sampling.
"""

import dataclasses
from collections.abc import Mapping

import numpy as np

from ernjax.data import whitestripe
from ernjax.data.geometry import Image, bounding_box, normalize, reorient_canonical, resample
from ernjax.errors import InputError
from ernjax.preprocess import bias, register, skullstrip

STEPS = ("reorient", "n4", "coregister", "mni", "skullstrip", "normalize", "crop")
# Registration to the template always runs on its 2 mm version: as accurate for 12 DOF, 8x faster.
_REGISTRATION_RESOLUTION = 2


def check_steps(steps) -> tuple[str, ...]:
    """Validates step names and returns them in execution order.

    Raises:
      ValueError: an unknown step name.
    """
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ValueError(f"unknown preprocessing steps {unknown}: choose from {STEPS}")
    return tuple(s for s in STEPS if s in steps)


def choose_reference(modalities, priority) -> str:
    """The first modality of `priority` that the subject has (else the first modality)."""
    for name in priority:
        if name in modalities:
            return name
    return next(iter(modalities))


@dataclasses.dataclass
class State:
    """A subject between steps.

    Attributes:
      images: modality -> Image (on a common grid once co-registered or in template space).
      lesion: the lesion mask as an Image, or None.
      lesion_on: the modality whose grid the lesion mask was drawn on.
      brain: the brain mask as an Image (any grid; it is resampled where needed), or None.
      reference: the reference modality.
      to_template: 4x4 world map template -> subject (after `mni` or atlas skull stripping).
      metrics: numbers for the manifest and the QC index.
      qc_rows: (step, images, brain mask, metric text) after each step, for the QC figure.
    """

    images: dict
    lesion: Image | None
    lesion_on: str
    brain: Image | None = None
    reference: str = ""
    to_template: np.ndarray | None = None
    metrics: dict = dataclasses.field(default_factory=dict)
    qc_rows: list = dataclasses.field(default_factory=list)

    def snapshot(self, step: str, text: str = "") -> None:
        """Records the images after `step` for the QC figure."""
        self.qc_rows.append((step, dict(self.images), self.brain, text))


def _reorient(state: State, settings, subject: str) -> str:
    state.images = {m: reorient_canonical(im) for m, im in state.images.items()}
    if state.lesion is not None:
        state.lesion = reorient_canonical(state.lesion)
    return ""


def _n4(state: State, settings, subject: str) -> str:
    iterations = tuple(settings.n4_iterations)
    state.images = {
        m: bias.n4_correct(im, shrink=settings.n4_shrink, iterations=iterations)[0]
        for m, im in state.images.items()
    }
    return ""


def _register_kwargs(settings, subject: str) -> dict:
    return dict(
        iterations=settings.registration_iterations,
        sampling=settings.registration_sampling,
        min_mi=settings.min_mutual_information,
        subject=subject,
    )


def _coregister(state: State, settings, subject: str, paths: Mapping) -> str:
    ref = state.images[state.reference]
    texts = []
    for m, im in state.images.items():
        if m == state.reference:
            continue
        reg = register.register(
            ref, im, kind="rigid", path=paths.get(m, ""), **_register_kwargs(settings, subject)
        )
        state.metrics[f"mi_before_{m}"] = reg.mi_before
        state.metrics[f"mi_after_{m}"] = reg.mi_after
        texts.append(f"{m} {reg.mi_before:.2f}->{reg.mi_after:.2f}")
        state.images[m] = resample(register.moved(im, reg.transform), ref.data.shape, ref.affine, 1)
        if state.lesion is not None and state.lesion_on == m:
            state.lesion = register.moved(state.lesion, reg.transform)
    if state.lesion is not None:
        state.lesion = resample(state.lesion, ref.data.shape, ref.affine, order=0)
    return "MI vs " + state.reference + ": " + ", ".join(texts)


def _template_transform(state: State, settings, subject: str, paths: Mapping) -> np.ndarray:
    """Registers the reference (its rough brain only) to the template; cached on the state."""
    if state.to_template is None:
        ref = state.images[state.reference]
        template, _ = skullstrip.mni_template(
            _REGISTRATION_RESOLUTION, settings.template_mask_threshold
        )
        # The template is skull-stripped: register the subject's rough brain, not the skull.
        brain = Image(ref.data * skullstrip.rough_brain_mask(ref), ref.affine)
        kwargs = _register_kwargs(settings, subject)
        reg = register.register(
            template, brain, kind="affine", path=paths.get(state.reference, ""), **kwargs
        )
        state.metrics["mi_template_before"] = reg.mi_before
        state.metrics["mi_template"] = reg.mi_after
        state.to_template = reg.transform
    return state.to_template


def _mni(state: State, settings, subject: str, paths: Mapping) -> str:
    transform = _template_transform(state, settings, subject, paths)
    template, mask = skullstrip.mni_template(
        settings.template_resolution, settings.template_mask_threshold
    )
    shape, affine = template.data.shape, template.affine
    state.images = {
        m: resample(register.moved(im, transform), shape, affine, 1)
        for m, im in state.images.items()
    }
    if state.lesion is not None:
        state.lesion = resample(register.moved(state.lesion, transform), shape, affine, order=0)
    if state.brain is not None:
        state.brain = resample(register.moved(state.brain, transform), shape, affine, order=0)
    before, after = state.metrics["mi_template_before"], state.metrics["mi_template"]
    return f"MI {state.reference} vs MNI152: {before:.2f}->{after:.2f}"


def _skullstrip(state: State, settings, subject: str, paths: Mapping) -> str:
    ref = state.images[state.reference]
    if settings.skullstrip == "atlas":
        transform = _template_transform(state, settings, subject, paths)
        if "mni" in settings.steps:
            transform = np.eye(4)  # the images are in template space already
        _, mask = skullstrip.mni_template(
            settings.template_resolution, settings.template_mask_threshold
        )
        brain = skullstrip.atlas_brain_mask(ref.data.shape, ref.affine, transform, mask)
    else:
        brain = skullstrip.learned_brain_mask(ref, settings.skullstrip, settings.skullstrip_weights)
    if not brain.any():
        raise InputError(
            subject, paths.get(state.reference, ""), "the brain mask is empty after registration"
        )
    state.brain = Image(brain.astype(np.float32), ref.affine)
    volume = skullstrip.mask_volume_ml(brain, ref.affine)
    if "mni" in settings.steps:  # template space: a template ml is det(A) ml of the subject
        volume *= abs(np.linalg.det(state.to_template[:3, :3]))
    state.metrics["brain_ml"] = volume
    state.images = {
        m: Image(im.data * _mask_on(state.brain, im), im.affine) for m, im in state.images.items()
    }
    return f"brain mask {volume:.0f} ml (native space)"


def _mask_on(mask: Image, image: Image) -> np.ndarray:
    """The mask resampled (nearest) onto `image`'s grid, as booleans."""
    return resample(mask, image.data.shape, image.affine, order=0).data > 0.5


def _normalize(state: State, settings, subject: str, paths: Mapping) -> str:
    out = {}
    for m, im in state.images.items():
        region = _mask_on(state.brain, im) if state.brain is not None else im.data > 0
        try:  # WhiteStripe's rule for the white-matter mode is the modality's (its name)
            out[m] = Image(normalize(im.data, region, settings.normalize, m), im.affine)
        except whitestripe.StripeError as e:
            raise InputError(subject, paths.get(m, ""), str(e)) from e
    state.images = out
    return settings.normalize


def _crop(state: State, settings, subject: str) -> str:
    def cropped(im: Image, box) -> Image:
        start = np.eye(4)
        start[:3, 3] = [s.start for s in box]
        return Image(np.ascontiguousarray(im.data[box]), im.affine @ start)

    ref = state.images[state.reference]
    region = _mask_on(state.brain, ref) if state.brain is not None else ref.data > 0
    box = bounding_box(region, settings.crop_margin)
    grid = (ref.data.shape, ref.affine)
    for m, im in state.images.items():
        same = im.data.shape == grid[0] and np.allclose(im.affine, grid[1])
        state.images[m] = cropped(
            im, box if same else bounding_box(im.data > 0, settings.crop_margin)
        )
    new_ref = state.images[state.reference]
    if state.lesion is not None:
        state.lesion = resample(state.lesion, new_ref.data.shape, new_ref.affine, order=0)
    if state.brain is not None:
        state.brain = resample(state.brain, new_ref.data.shape, new_ref.affine, order=0)
    return f"{tuple(new_ref.data.shape)} voxels"


def run_steps(state: State, settings, subject: str, paths: Mapping) -> State:
    """Runs the configured steps on one subject, recording a QC row after each.

    Args:
      state: the loaded subject (images, lesion mask, reference set).
      settings: `config.data.preprocess` (or an object with the same attributes).
      subject: the subject ID, for errors.
      paths: modality -> input file, for errors.

    Returns:
      The state after the last step.

    Raises:
      InputError: a step failed on this subject's data (registration, empty brain mask).
    """
    state.snapshot("input")
    plain = {"reorient": _reorient, "n4": _n4, "crop": _crop}
    located = {
        "coregister": _coregister,
        "mni": _mni,
        "skullstrip": _skullstrip,
        "normalize": _normalize,
    }
    for step in check_steps(settings.steps):
        if step in plain:
            text = plain[step](state, settings, subject)
        else:
            text = located[step](state, settings, subject, paths)
        state.snapshot(step, text)
    return state
