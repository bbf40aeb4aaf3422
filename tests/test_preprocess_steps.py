"""Preprocessing steps on small synthetic volumes with known transforms and bias fields."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ernjax.data.geometry import Image, resample
from ernjax.errors import InputError
from ernjax.preprocess import bias, pipeline, register, skullstrip

N, SPACING = 36, 2.0


def head(n: int = N, spacing: float = SPACING) -> Image:
    """An asymmetric 'head': an ellipsoid with three inner structures (so rotations are visible)."""
    x, y, z = np.mgrid[:n, :n, :n].astype(float) - n / 2 + 0.5
    d = np.zeros((n, n, n), np.float32)
    d[(x / 13) ** 2 + (y / 15) ** 2 + (z / 11) ** 2 < 1] = 100
    d[((x - 4) / 5) ** 2 + (y / 6) ** 2 + ((z - 2) / 4) ** 2 < 1] = 250
    d[((x + 6) / 3) ** 2 + ((y + 5) / 4) ** 2 + (z / 6) ** 2 < 1] = 40
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -spacing * n / 2
    return Image(ndimage.gaussian_filter(d, 1.0), affine)


def rigid(degrees, shift) -> np.ndarray:
    """A 4x4 rigid transform."""
    t = np.eye(4)
    t[:3, :3] = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    t[:3, 3] = shift
    return t


def seen_through(image: Image, transform: np.ndarray) -> Image:
    """The same anatomy moved by `transform` (world), resampled on the original grid.

    A point x of the original lands at transform @ x, so registering the original (fixed) to
    the result (moving) must return `transform`.
    """
    return resample(Image(image.data, transform @ image.affine), image.data.shape, image.affine)


def max_displacement(a: np.ndarray, b: np.ndarray, image: Image) -> float:
    """Largest distance (mm) between where two transforms send the voxels of the head."""
    pts = np.argwhere(image.data > 50)
    world = pts @ image.affine[:3, :3].T + image.affine[:3, 3]
    hom = np.c_[world, np.ones(len(world))]
    return float(np.linalg.norm(hom @ (a - b).T, axis=1).max())


def test_sitk_round_trip_keeps_oblique_affine():
    img = head(8)
    affine = rigid((10, -5, 20), (3, 4, 5)) @ np.diag([0.9, 1.1, 5.5, 1.0])
    back = register.from_sitk(register.to_sitk(Image(img.data, affine)))
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(back.data, img.data)


def test_rigid_registration_recovers_known_motion_within_a_voxel():
    fixed = head()
    truth = rigid((6, -4, 8), (3.0, -4.0, 2.5))
    # A different contrast for the moving image: mutual information must not need equal values.
    moving = seen_through(fixed, truth)
    moving = Image(np.sqrt(moving.data) * 10, moving.affine)
    reg = register.register(fixed, moving, kind="rigid", sampling=0.2, iterations=100)
    assert max_displacement(reg.transform, truth, fixed) < SPACING
    assert reg.mi_after > reg.mi_before
    # Seeded sampling: the same result every run (seed 0 once meant "from the clock" to ITK).
    again = register.register(fixed, moving, kind="rigid", sampling=0.2, iterations=100)
    np.testing.assert_allclose(again.transform, reg.transform, atol=1e-9)  # threads: ~1e-15


def test_affine_registration_recovers_scaling_and_shift_within_a_voxel():
    fixed = head()
    truth = np.diag([1.1, 0.95, 1.05, 1.0])
    truth[:3, 3] = (4.0, -3.0, 2.0)
    moving = seen_through(fixed, truth)
    reg = register.register(fixed, moving, kind="affine", sampling=0.2, iterations=150)
    assert max_displacement(reg.transform, truth, fixed) < SPACING


def test_n4_removes_a_known_multiplicative_bias_field():
    img = head()
    x, y, z = (np.mgrid[:N, :N, :N].astype(float) - N / 2) / 20
    # About +-30 % across the head, like a receive-coil field at 1.5-3 T.
    field = np.exp(0.3 * x + 0.2 * y - 0.15 * z**2).astype(np.float32)
    corrected, estimate = bias.n4_correct(Image(img.data * field, img.affine), shrink=2)
    tissue = img.data > 50

    def spread(data):  # relative spread of corrected / true intensity over the head
        ratio = data[tissue] / img.data[tissue]
        return ratio.std() / ratio.mean()

    assert spread(corrected.data) < 0.5 * spread(img.data * field)
    ratio = estimate[tissue] / field[tissue]  # the field is found up to a constant factor
    assert ratio.std() / ratio.mean() < 0.06


def test_registration_of_images_that_do_not_overlap_fails_with_subject_and_file():
    fixed = head()
    far = Image(fixed.data, rigid((0, 0, 0), (500.0, 0, 0)) @ fixed.affine)
    with pytest.raises(InputError, match="subject s1.*file t2.nii.gz.*(overlap|converge)"):
        register.register(fixed, far, subject="s1", path="t2.nii.gz", iterations=20)


def test_registration_that_diverges_fails_to_converge():
    fixed = head()
    noise = Image(
        np.random.default_rng(0).random(fixed.data.shape).astype(np.float32), fixed.affine
    )
    with pytest.raises(InputError, match="subject s1.*failed to converge|do not overlap"):
        register.register(
            fixed, noise, subject="s1", path="x.nii.gz", learning_rate=500.0, iterations=50
        )


def test_atlas_mask_carried_through_a_known_transform_scales_the_volume():
    _, mask = skullstrip.mni_template(2)
    scale = np.diag([0.9, 0.9, 0.9, 1.0])
    out = skullstrip.atlas_brain_mask(mask.data.shape, mask.affine, scale, mask)
    template_ml = skullstrip.mask_volume_ml(mask.data > 0, mask.affine)
    assert skullstrip.mask_volume_ml(out, mask.affine) == pytest.approx(
        0.729 * template_ml, rel=0.03
    )
    assert 1500 < template_ml < 2200  # MNI152 is larger than an average adult brain


def test_learned_skullstrip_hook_needs_weights_on_disk(tmp_path):
    img = head(8)
    skullstrip.register_learned_method("fake", lambda image, weights: image.data > 50)
    with pytest.raises(ValueError, match="weights"):
        skullstrip.learned_brain_mask(img, "fake", tmp_path / "missing.pt")
    (tmp_path / "w.pt").write_bytes(b"0")
    assert skullstrip.learned_brain_mask(img, "fake", tmp_path / "w.pt").any()
    with pytest.raises(ValueError, match="unknown skull-stripping"):
        skullstrip.learned_brain_mask(img, "nope", tmp_path / "w.pt")


def test_steps_are_validated_and_ordered():
    assert pipeline.check_steps(["crop", "reorient", "n4"]) == ("reorient", "n4", "crop")
    with pytest.raises(ValueError, match="unknown preprocessing steps"):
        pipeline.check_steps(["reorient", "bet"])
    assert pipeline.choose_reference({"t2": 0, "t1c": 0}, ("t1c", "t1", "t2")) == "t1c"
    assert pipeline.choose_reference({"t2": 0, "flair": 0}, ("t1", "t2")) == "t2"
