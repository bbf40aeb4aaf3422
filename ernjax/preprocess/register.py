"""Registration by mutual information (SimpleITK): rigid co-registration and affine to MNI152.

Gao 2020 and Ying 2025 co-registered every series to one reference series (FSL FLIRT, 6 DOF) and
the reference to the MNI152 template (12 DOF). Here SimpleITK's Mattes mutual information does
both. A registration result is a world-space transform, a 4x4 matrix `T` in RAS+ mm mapping a
point of the fixed image's space to the moving image's space (the ITK convention), so that moving
an image needs no resampling: `moved(image, T)` only changes its affine, and `geometry.resample`
puts it on any grid.
"""

import dataclasses

import numpy as np
import SimpleITK as sitk

from ernjax.data.geometry import Image, resample
from ernjax.errors import InputError

# RAS+ (NIfTI, nibabel) <-> LPS+ (DICOM, ITK) world coordinates: flip x and y.
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclasses.dataclass(frozen=True)
class Registration:
    """The outcome of one registration.

    Attributes:
      transform: 4x4 world (RAS+ mm) map from fixed-image space to moving-image space.
      mi_before: mutual information (nats) of the images as the headers place them.
      mi_after: mutual information (nats) after registration.
      stop: the optimizer's stop condition, for the log.
    """

    transform: np.ndarray
    mi_before: float
    mi_after: float
    stop: str = ""


def to_sitk(image: Image) -> sitk.Image:
    """Converts an Image (RAS+ affine, array axes i, j, k) to a SimpleITK image (LPS+)."""
    out = sitk.GetImageFromArray(np.ascontiguousarray(image.data.transpose(2, 1, 0), np.float32))
    lps = _FLIP @ image.affine
    spacing = image.spacing
    out.SetSpacing([float(s) for s in spacing])
    out.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    out.SetOrigin([float(v) for v in lps[:3, 3]])
    return out


def from_sitk(image: sitk.Image) -> Image:
    """Converts a SimpleITK image back to an Image (inverse of `to_sitk`)."""
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
    lps = np.eye(4)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return Image(np.ascontiguousarray(data), _FLIP @ lps)


def transform_matrix(transform: sitk.Transform) -> np.ndarray:
    """Returns a SimpleITK matrix-offset transform (Euler3D, Affine) as a RAS+ 4x4 matrix."""
    t = transform
    while t.GetName() == "CompositeTransform":  # Execute() may wrap the result
        composite = sitk.CompositeTransform(t)
        if composite.GetNumberOfTransforms() != 1:
            raise ValueError("expected a single matrix-offset transform")
        t = composite.GetNthTransform(0)
    typed = {"Euler3DTransform": sitk.Euler3DTransform, "AffineTransform": sitk.AffineTransform}
    t = typed[t.GetName()](t)
    a = np.asarray(t.GetMatrix()).reshape(3, 3)
    c = np.asarray(t.GetCenter())
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = np.asarray(t.GetTranslation()) + c - a @ c  # y = A (x - c) + c + t
    return _FLIP @ lps @ _FLIP


def moved(image: Image, transform: np.ndarray) -> Image:
    """The image placed in the fixed space of `transform`, without resampling.

    A fixed-space point x sees the moving image at T x, so the image's voxel-to-world affine in
    fixed space is inv(T) @ affine.
    """
    return Image(image.data, np.linalg.inv(transform) @ image.affine)


def mutual_information(fixed: Image, moving: Image, bins: int = 32) -> float:
    """Mutual information (nats) of `moving` resampled onto `fixed`'s grid, over the fixed head.

    Voxels counted are those of the fixed image above 5 % of its 99th percentile (the head, not
    the air around it), so that a moving image outside the field of view scores near 0.
    """
    other = resample(moving, fixed.data.shape, fixed.affine, order=1).data
    ref = fixed.data
    region = ref > 0.05 * np.percentile(ref, 99)
    if region.sum() < 10:
        return 0.0
    hist, _, _ = np.histogram2d(ref[region], other[region], bins=bins)
    p = hist / hist.sum()
    px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (px @ py)[nz])).sum())


def _method(bins: int, sampling: float, iterations: int, learning_rate: float, seed: int):
    """A multi-resolution Mattes-MI registration method (shrink 4, 2, 1 with smoothing)."""
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    # SimpleITK reads seed 0 as "seed from the wall clock": shift by one so that every seed,
    # 0 included, gives the same samples on every run.
    reg.SetMetricSamplingPercentage(sampling, seed + 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=learning_rate,
        minStep=1e-3,
        numberOfIterations=iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    # Translations in mm and rotations in radians: scale the steps from the image extent.
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return reg


def _run(reg, fixed_itk, moving_itk, subject, path) -> sitk.Transform:
    """Runs the registration; ITK failures become InputErrors naming subject and file."""
    try:
        out = reg.Execute(fixed_itk, moving_itk)
    except RuntimeError as e:
        # ITK's usual failure: the moving image left the fixed field of view during optimization.
        problem = str(e).strip().splitlines()[-1][:200]
        raise InputError(subject, path, f"registration failed to converge ({problem})") from e
    return out


def _check(transform, max_shift, scale_range, subject, path) -> None:
    """Rejects transforms a real head cannot need: the optimizer diverged."""
    if not np.all(np.isfinite(transform)):
        raise InputError(subject, path, "registration failed to converge (non-finite transform)")
    singular = np.linalg.svd(transform[:3, :3], compute_uv=False)
    shift = float(np.linalg.norm(transform[:3, 3]))
    if shift > max_shift or singular.min() < scale_range[0] or singular.max() > scale_range[1]:
        raise InputError(
            subject,
            path,
            f"registration failed to converge (implausible result: shift {shift:.0f} mm, "
            f"scales {singular.min():.2f}-{singular.max():.2f})",
        )


def register(
    fixed: Image,
    moving: Image,
    *,
    kind: str = "rigid",
    bins: int = 32,
    sampling: float = 0.1,
    iterations: int = 200,
    learning_rate: float = 1.0,
    min_mi: float = 0.05,
    subject: str = "",
    path="",
    seed: int = 0,
) -> Registration:
    """Registers `moving` to `fixed` by mutual information.

    Args:
      fixed: the image that stays (the reference modality, or the template).
      moving: the image to align.
      kind: "rigid" (6 DOF, initialised as the headers place the images: series of one session
        share a scanner frame) or "affine" (12 DOF, initialised by the centres of mass, as for a
        subject and a template).
      bins: histogram bins of the metric.
      sampling: fraction of the fixed voxels sampled per iteration.
      iterations: optimizer iterations per resolution level.
      learning_rate: the optimizer's first step (mm / radians after scaling).
      min_mi: below this mutual information after registration the images do not overlap.
      subject: subject ID for errors.
      path: the moving image's file, for errors.
      seed: sampling seed (results are reproducible).

    Returns:
      The Registration (transform and mutual information before and after).

    Raises:
      InputError: ITK failed, the transform is implausible, or the images do not overlap.
    """
    fixed_itk, moving_itk = to_sitk(fixed), to_sitk(moving)
    if kind == "rigid":
        init = sitk.Euler3DTransform()
        # Rotate about the fixed image centre; identity = trust the scanner coordinates.
        centre = np.array(fixed_itk.GetSize()) / 2.0 - 0.5
        init.SetCenter(fixed_itk.TransformContinuousIndexToPhysicalPoint(centre.tolist()))
        max_shift, scale_range = 60.0, (0.99, 1.01)
    elif kind == "affine":
        init = sitk.CenteredTransformInitializer(
            fixed_itk,
            moving_itk,
            sitk.AffineTransform(3),
            sitk.CenteredTransformInitializerFilter.MOMENTS,
        )
        max_shift, scale_range = 150.0, (0.6, 1.6)
    else:
        raise ValueError(f"unknown registration kind {kind!r}: use 'rigid' or 'affine'")
    reg = _method(bins, sampling, iterations, learning_rate, seed)
    reg.SetInitialTransform(init, inPlace=False)
    out = _run(reg, fixed_itk, moving_itk, subject, path)
    transform = transform_matrix(out)
    _check(transform, max_shift, scale_range, subject, path)
    before = mutual_information(fixed, moving, bins)
    after = mutual_information(fixed, moved(moving, transform), bins)
    if after < min_mi:
        raise InputError(
            subject,
            path,
            f"the images do not overlap after registration (mutual information {after:.3f} "
            f"< {min_mi})",
        )
    return Registration(transform, before, after, reg.GetOptimizerStopConditionDescription())
