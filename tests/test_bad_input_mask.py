"""A lesion mask checked against its image (issue 14, item 2): same grid taken as is, another grid
resampled from its own affine with the overlap logged, an inconsistent header or no overlap
refused with the subject, the file and both grids."""

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import configs.ern
import configs.resnet3d
from ernjax.data import geometry as geo
from ernjax.data import records, samples, synthetic
from ernjax.data.cohort import Subject
from ernjax.errors import InputError
from ernjax.preprocess import runner

SID = "syn-0001"
MODS = ("t1", "t2", "t1c")
DUMMY = Path(__file__).resolve().parents[1] / "data_builders" / "ernjax_mri" / "dummy_data"
# the phantom's grid (nilearn's 2 mm MNI152), as the messages must state it
T1_GRID = "t1: shape 99x117x95, voxel 2, 2, 2 mm, origin (-98, -134, -72) mm, RAS"
HALF_GRID = "Mask: shape 50x59x48, voxel 2, 2, 2 mm, origin (-98, -134, -72) mm, RAS"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """One phantom subject (t1, t2, t1c; lesion mask array) and its affine."""
    root = tmp_path_factory.mktemp("phantom")
    arrays, affine = synthetic.make_subject(0, 1, "recurrence")
    files = {m: root / SID / f"{SID}_{m}.nii.gz" for m in MODS}
    for m, f in files.items():
        geo.save_image(geo.Image(arrays[m], affine), f)
    return files, arrays["mask"], affine


def with_mask(phantom, tmp_path, mask, affine, slices=None) -> Subject:
    files, _, _ = phantom
    path = tmp_path / f"{SID}_mask.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(mask, np.uint8), affine), str(path))
    return Subject(SID, 1, "recurrence", files, path, slices, {})


def data(kind):
    if kind == "slices2d":
        return configs.ern.get_config("tiny").data
    d = configs.resnet3d.get_config("tiny").data
    d.channels, d.reference = MODS, "t1"
    return d


def refused(s: Subject, kind: str, *parts: str) -> None:
    with pytest.raises(InputError) as err:
        samples.load_subject(s, data(kind))
    msg = str(err.value)
    assert err.value.subject == SID and err.value.path == str(s.mask)
    assert msg.startswith(f"subject {SID}, file {s.mask}: ")
    for part in parts:
        assert part in msg


def blocks(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the lesion as whole 2x2x2 blocks on the image grid, the same lesion on a 4 mm grid)."""
    even = np.pad(mask, [(0, n % 2) for n in mask.shape])
    coarse = even.reshape(even.shape[0] // 2, 2, even.shape[1] // 2, 2, -1, 2).any(axis=(1, 3, 5))
    fine = coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2)[tuple(slice(0, n) for n in mask.shape)]
    return fine, coarse


def coarse_affine(affine):
    """The 4 mm grid whose voxel m spans voxels 2m, 2m+1 of the 2 mm one: its centre is 2m+0.5."""
    return affine @ np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1.0]])


def corner_offset_mm(a, b, shape) -> float:
    """Largest distance between the world positions two affines give a corner voxel of `shape`."""
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in shape], indexing="ij")).reshape(3, -1).T
    world = [nib.affines.apply_affine(x, corners) for x in (a, b)]
    return float(np.linalg.norm(world[0] - world[1], axis=1).max())


def resample_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "on another grid" in r.getMessage()]


@pytest.mark.parametrize("kind", ["slices2d", "volumes3d"])
def test_the_issue_case_half_shape_mask_with_the_image_affine_is_refused(phantom, tmp_path, kind):
    _, mask, affine = phantom
    s = with_mask(phantom, tmp_path, mask[::2, ::2, ::2], affine)
    refused(s, kind, "has the affine of the t1 image but another shape", HALF_GRID, T1_GRID)


@pytest.mark.parametrize("kind", ["slices2d", "volumes3d"])
def test_mask_on_a_coarser_grid_gives_the_same_lesion(phantom, tmp_path, kind, caplog):
    _, mask, affine = phantom
    fine, coarse = blocks(mask)
    same = samples.load_subject(with_mask(phantom, tmp_path / "a", fine, affine), data(kind))
    assert resample_warnings(caplog) == []
    other = with_mask(phantom, tmp_path / "b", coarse, coarse_affine(affine))
    vol = samples.load_subject(other, data(kind))
    assert vol.lesion_slices == same.lesion_slices and (vol.mask == same.mask).all()
    if kind == "slices2d":  # every lesion slice of the 2 mm mask, as the phantom drew them
        lesion = np.nonzero(fine.any(axis=(0, 1)))[0]
        assert vol.lesion_slices == tuple(lesion) and len(lesion) > 5
    (log,) = resample_warnings(caplog)
    assert f"subject {SID}" in log and f"{coarse.sum()} of {coarse.sum()} lesion voxels" in log
    assert "(100%) inside the t1 image" in log
    assert "Mask: shape 50x59x48, voxel 4, 4, 4 mm, origin (-97, -133, -71) mm" in log


def test_header_noise_within_tolerance_is_one_grid(phantom, tmp_path, caplog):
    _, mask, affine = phantom
    noisy = affine.copy()
    noisy[:3, :3] *= 1 + 1e-6  # float32-sized round-off: 0.0004 mm at the far corner
    noisy[:3, 3] += [3e-4, -3e-4, 2e-4]
    assert 1e-4 < corner_offset_mm(noisy, affine, mask.shape) < 1e-3
    exact = samples.load_subject(with_mask(phantom, tmp_path / "a", mask, affine), data("slices2d"))
    vol = samples.load_subject(with_mask(phantom, tmp_path / "b", mask, noisy), data("slices2d"))
    assert vol.lesion_slices == exact.lesion_slices and (vol.mask == exact.mask).all()
    assert resample_warnings(caplog) == []  # taken voxel for voxel, not resampled
    # the same tolerance says "the image's affine" for the issue's case: still refused
    half = with_mask(phantom, tmp_path / "c", mask[::2, ::2, ::2], noisy)
    refused(half, "slices2d", "has the affine of the t1 image but another shape", T1_GRID)
    # beyond it (0.1 mm) the mask is another grid: resampled, said so, the same voxels
    moved = affine.copy()
    moved[:3, 3] += 0.1
    vol = samples.load_subject(with_mask(phantom, tmp_path / "d", mask, moved), data("slices2d"))
    assert vol.lesion_slices == exact.lesion_slices and (vol.mask == exact.mask).all()
    assert len(resample_warnings(caplog)) == 1


def test_mask_outside_the_field_of_view_is_refused(phantom, tmp_path):
    _, mask, affine = phantom
    far = affine.copy()
    far[:3, 3] += [0, 0, 500.0]  # a mask of another scan (or a header that lost its offset)
    s = with_mask(phantom, tmp_path, mask, far)
    grid = "Mask: shape 99x117x95, voxel 2, 2, 2 mm, origin (-98, -134, 428) mm, RAS"
    refused(s, "volumes3d", "does not overlap the t1 image", grid, T1_GRID)


def test_preprocessing_refuses_the_issue_case(phantom, tmp_path):
    files, mask, affine = phantom
    raw = tmp_path / "raw" / SID
    raw.mkdir(parents=True)
    for f in files.values():
        shutil.copy(f, raw / f.name)
    bad = raw / f"{SID}_mask.nii.gz"
    nib.save(nib.Nifti1Image(mask[::2, ::2, ::2], affine), str(bad))
    settings = configs.ern.get_config("tiny").data.preprocess
    settings.steps, settings.qc = ("reorient",), False
    summary = runner.preprocess_cohort(
        tmp_path / "raw",
        tmp_path / "out",
        modalities={m: f"*_{m}.nii.gz" for m in MODS},
        settings=settings,
        mask_pattern="*_mask.nii.gz",
        progress=False,
    )
    assert summary.done == [] and list(summary.failed) == [SID]
    for part in (f"subject {SID}", bad.name, "another shape", HALF_GRID, T1_GRID):
        assert part in summary.failed[SID]
    assert not (tmp_path / "out" / SID).exists()


@pytest.mark.parametrize("workers", ["default", 1])  # default: all cores, spawned processes
def test_records_build_with_the_bad_mask_fails_clean(tmp_path, workers):
    d = configs.ern.get_config("tiny").data
    if workers != "default":
        d.build_workers = workers
    cohort = tmp_path / "cohort"
    shutil.copytree(DUMMY, cohort)
    path = cohort / "dummy-04" / "dummy-04_mask.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::2, ::2, ::2], img.affine), str(path))
    with pytest.raises(InputError) as err:
        records.build(d, cohort, tmp_path / "rec")
    msg = str(err.value)
    assert msg.startswith(f"subject dummy-04, file {path}: the lesion mask has the affine of")
    assert "Mask: shape 10x12x5, voxel 2, 2, 4 mm" in msg and "t1: shape 20x24x10" in msg
    assert [p for p in (tmp_path / "rec").rglob("*")] == []
