"""The cohort runner: output layout, manifest skip/retry logic, bad inputs, MNI152 + skull strip."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_preprocess_steps import head, rigid, seen_through

from ernjax import defaults
from ernjax.data.geometry import Image, load_image, resample, save_image
from ernjax.preprocess import register, runner, skullstrip

MODALITIES = {"t1": "*_t1.nii.gz", "t2": "*_t2.nii.gz"}
ROOT = Path(__file__).resolve().parents[1]


def settings(*steps, **overrides):
    s = defaults.base_config().data.preprocess
    s.steps = steps
    s.n4_iterations = (20, 20)
    s.registration_iterations = 60
    s.registration_sampling = 0.2
    s.update(overrides)
    return s


def write_subject(root: Path, subject: str, shift: float) -> None:
    """t1 stored LPS; t2 with another contrast, moved by a known rigid motion, on its own grid."""
    t1 = head()
    n = t1.data.shape[0]
    flip = np.array([[-1.0, 0, 0, n - 1], [0, -1, 0, n - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    t2 = seen_through(
        Image(300 - t1.data * (t1.data > 1), t1.affine), rigid((0, 0, 5), (shift, 0, 0))
    )
    t2 = Image(t2.data * (t2.data < 299), t2.affine)
    lesion = (t1.data > 200).astype(np.float32)  # the bright blob, drawn on the t1 grid
    t1 = Image(np.ascontiguousarray(t1.data[::-1, ::-1]), t1.affine @ flip)  # same anatomy, LPS
    lesion = Image(np.ascontiguousarray(lesion[::-1, ::-1]), t1.affine)
    folder = root / subject
    save_image(t1, folder / f"{subject}_t1.nii.gz")
    save_image(t2, folder / f"{subject}_t2.nii.gz")
    save_image(lesion, folder / f"{subject}_lesion.nii.gz")


def write_singular_affine(path: Path) -> None:
    """Rewrites a NIfTI with an all-zero sform (nibabel refuses to write one itself)."""
    img = nib.load(path)
    img = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
    img.header.set_qform(None, code=0)
    img.header.set_sform(img.affine, code=1)
    raw = bytearray(img.to_bytes())
    raw[280:328] = bytes(48)  # srow_x, srow_y, srow_z (NIfTI-1 header offsets)
    path.write_bytes(gzip.compress(bytes(raw)))


@pytest.fixture
def cohort(tmp_path):
    root = tmp_path / "raw"
    for i, subject in enumerate(["s1", "s2"]):
        write_subject(root, subject, shift=3.0 + i)
    (root / "labels.csv").write_text("subject_id,label\ns1,necrosis\ns2,recurrence\n")
    return root


def run(cohort_dir, out, s, **kw):
    kw.setdefault("mask_pattern", "*_lesion.nii.gz")
    return runner.preprocess_cohort(
        cohort_dir, out, modalities=MODALITIES, settings=s, progress=False, **kw
    )


def test_layout_coregistration_and_lesion_mask(cohort, tmp_path):
    out = tmp_path / "out"
    s = settings("reorient", "n4", "coregister", "normalize", "crop")
    summary = run(cohort, out, s)
    assert summary.ok and sorted(summary.done) == ["s1", "s2"]
    assert (out / "labels.csv").read_text() == (cohort / "labels.csv").read_text()
    t1, t2 = (load_image(out / "s1" / f"s1_{m}.nii.gz") for m in ("t1", "t2"))
    mask = load_image(out / "s1" / "s1_mask.nii.gz", allow_empty=True)
    assert t1.data.shape == t2.data.shape == mask.data.shape
    np.testing.assert_allclose(t2.affine, t1.affine)
    assert set(np.unique(mask.data)) <= {0.0, 1.0} and mask.data.any()
    assert t1.data[mask.data > 0].mean() > 0.7  # the lesion mask still covers the bright blob
    assert nib.aff2axcodes(t1.affine) == ("R", "A", "S")
    assert 0.0 <= t1.data.min() and t1.data.max() <= 1.0
    # co-registered: t2 is the inverted contrast, so it is dark where t1 is bright
    head_ = t1.data > 0.1
    assert np.corrcoef(t1.data[head_], t2.data[head_])[0, 1] < -0.95
    record = runner.load_manifest(out)["s1"]
    assert record["metrics"]["mi_after_t2"] > record["metrics"]["mi_before_t2"]
    assert (out / runner.WORK_DIR / "qc" / "s1.png").stat().st_size > 1000
    assert "s1" in summary.index.read_text()


def test_rerun_skips_done_subjects_and_redoes_changed_ones(cohort, tmp_path):
    out = tmp_path / "out"
    s = settings("reorient", "normalize")
    first = run(cohort, out, s, workers=2)
    assert sorted(first.done) == ["s1", "s2"]
    again = run(cohort, out, s)
    assert again.done == [] and sorted(again.reused) == ["s1", "s2"]
    write_subject(cohort, "s2", shift=6.0)  # changed input -> only s2 again
    (out / "s1" / "s1_t2.nii.gz").unlink()  # missing output -> s1 again too
    third = run(cohort, out, s)
    assert sorted(third.done) == ["s1", "s2"]
    fourth = run(cohort, out, settings("reorient", "normalize", normalize="zscore"))
    assert sorted(fourth.done) == ["s1", "s2"]  # new settings -> everything again


def test_bad_subjects_fail_alone_and_only_they_are_retried(cohort, tmp_path):
    out = tmp_path / "out"
    good = nib.load(cohort / "s2" / "s2_t2.nii.gz")
    flat = np.asarray(good.dataobj)[:, :, 0]
    nib.save(nib.Nifti1Image(flat, np.eye(4)), cohort / "s2" / "s2_t2.nii.gz")  # 2D image
    write_subject(cohort, "s3", shift=0.0)
    with open(cohort / "labels.csv", "a") as f:
        f.write("s3,necrosis\n")
    write_singular_affine(cohort / "s3" / "s3_t1.nii.gz")
    summary = run(cohort, out, settings("reorient", "coregister"), mask_pattern="")
    assert summary.done == ["s1"] and not summary.ok
    assert "s2_t2.nii.gz" in summary.failed["s2"] and "3D volume" in summary.failed["s2"]
    assert "subject s3" in summary.failed["s3"] and "s3_t1.nii.gz" in summary.failed["s3"]
    index = summary.index.read_text()
    assert index.index("s2") < index.index("s1") and "FAILED" in index
    write_subject(cohort, "s2", shift=4.0)  # fixed
    retry = run(cohort, out, settings("reorient", "coregister"), mask_pattern="")
    assert retry.done == ["s2"] and retry.reused == ["s1"] and list(retry.failed) == ["s3"]


def test_subject_without_overlap_fails_named(cohort, tmp_path):
    far = load_image(cohort / "s1" / "s1_t2.nii.gz")
    save_image(
        Image(far.data, rigid((0, 0, 0), (400, 0, 0)) @ far.affine), cohort / "s1" / "s1_t2.nii.gz"
    )
    summary = run(cohort, tmp_path / "out", settings("coregister"))
    assert summary.done == ["s2"]
    assert "subject s1" in summary.failed["s1"] and "s1_t2.nii.gz" in summary.failed["s1"]


def test_mni_and_atlas_skullstrip_on_a_template_derived_subject(tmp_path):
    template, mask = skullstrip.mni_template(2)
    truth = np.diag([0.92, 0.9, 0.95, 1.0])  # template -> subject: a smaller head, shifted
    truth[:3, 3] = (5.0, -8.0, 4.0)
    grid = np.diag([3.0, 3.0, 4.0, 1.0])
    grid[:3, 3] = (-90.0, -120.0, -70.0)
    subject = resample(register.moved(template, np.linalg.inv(truth)), (60, 72, 44), grid)
    save_image(Image(subject.data * 1000, grid), tmp_path / "raw" / "m1" / "m1_t1.nii.gz")
    s = settings("mni", "skullstrip", template_resolution=2)
    summary = runner.preprocess_cohort(
        tmp_path / "raw",
        tmp_path / "out",
        modalities={"t1": "*_t1.nii.gz"},
        settings=s,
        progress=False,
    )
    assert summary.ok, summary.failed
    metrics = runner.load_manifest(tmp_path / "out")["m1"]["metrics"]
    expected = np.prod(np.diag(truth)[:3]) * skullstrip.mask_volume_ml(mask.data > 0, mask.affine)
    assert metrics["brain_ml"] == pytest.approx(expected, rel=0.1)
    out = load_image(tmp_path / "out" / "m1" / "m1_t1.nii.gz")
    assert out.data.shape == template.data.shape
    brain = mask.data > 0
    assert np.corrcoef(out.data[brain], template.data[brain])[0, 1] > 0.8


def test_command_line_exits_nonzero_when_a_subject_failed(cohort, tmp_path):
    (cohort / "s2" / "s2_t1.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "ernjax.preprocess",
        f"--cohort_dir={cohort}",
        f"--out_dir={out}",
        "--steps=reorient,normalize",
        "--modalities=t1=*_t1.nii.gz,t2=*_t2.nii.gz",
        "--mask_pattern=",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "FAILED s2" in proc.stderr and "s2_t1.nii.gz" in proc.stderr
    assert (out / "s1" / "s1_t1.nii.gz").is_file()
    manifest = json.loads((out / runner.WORK_DIR / "manifest.json").read_text())
    assert manifest["subjects"]["s2"]["status"] == "failed"
