"""WhiteStripe (issue 20 item 1): ernjax against the `intensity-normalization` package on real
BraTS scans, what it does with a T1c, the config check, and both paths (sampling, preprocessing).

The reference is the package's own high-level call, `intensity_normalization.normalize_image(
image, method="whitestripe", mask=brain, modality=...)`, on the whole NIfTI volume, the way its
README uses it; ernjax reaches the same `WhiteStripeNormalizer` through its own region handling,
reorientation and cropping, so these tests check everything ernjax does around it.
"""

import nibabel as nib
import numpy as np
import pytest

import configs.ern
from ernjax.data import check, records, samples, whitestripe
from ernjax.data import geometry as geo
from ernjax.data.cohort import Subject
from ernjax.data.spec import SampleSpec
from ernjax.defaults import base_config
from ernjax.errors import InputError
from ernjax.preprocess import qc, runner

intensity_normalization = pytest.importorskip("intensity_normalization")

SUBJECT = "Brats18_TCIA02_135_1"  # a BraTS 2018 HGG case of ../shared/data, 2 mm
MODS = ("t1", "t1c", "t2", "flair")
# the package's modality for each channel: T1c is T1-weighted and takes the T1 rule
PACKAGE_MODALITY = {"t1": "t1", "t1c": "t1", "t2": "t2", "flair": "flair"}


def _files(shared_data, subject=SUBJECT, mods=MODS) -> dict:
    folder = shared_data / "brats2018_hgg_lgg_2mm" / subject
    return {m: folder / f"{subject}_{m}.nii.gz" for m in mods}


def _array(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, np.float32)


def _package(path, brain: np.ndarray, modality: str) -> np.ndarray:
    """The package's WhiteStripe of a NIfTI file inside `brain`, as its README calls it."""
    img = nib.load(path)
    mask = nib.Nifti1Image(brain.astype(np.uint8), img.affine)
    out = intensity_normalization.normalize_image(
        img, method="whitestripe", mask=mask, modality=modality
    )
    return np.asarray(out.get_data(), np.float32)


def _data(channels=MODS, reference="t1", **overrides):
    d = base_config().data
    d.kind = "volumes3d"
    d.modalities = {m: f"*_{m}.nii.gz" for m in MODS}
    d.channels, d.reference, d.normalize = channels, reference, "whitestripe"
    d.shape = (16, 16, 16)
    d.update(overrides)
    return SampleSpec.from_config(d)


def test_sampling_matches_the_package_on_a_real_scan(shared_data):
    files = _files(shared_data)
    vol = samples.load_on_grid(Subject(SUBJECT, 0, "HGG", files), _data())
    brain = _array(files["t1"]) != 0  # the reference's non-zero region, as samples takes it
    assert vol.brain.sum() == brain.sum()
    for c, m in enumerate(MODS):
        # fitted on the brain's voxels with signal in this channel (2 FLAIR voxels here are 0);
        # the package normalizes the whole volume, so the brain's zeros are compared too
        signal = brain & (_array(files[m]) != 0)
        theirs = _package(files[m], signal, PACKAGE_MODALITY[m])[brain]
        ours = vol.image[..., c]
        # reorientation permutes the voxels and the crop keeps the whole brain: the same values
        np.testing.assert_allclose(np.sort(ours[vol.brain]), np.sort(theirs), rtol=1e-6, atol=1e-4)
        assert not ours[~vol.brain].any()  # zero outside the brain, as minmax and zscore
    # WhiteStripe units: the stripe's SD, so the brain spans tens of them (not [0, 1])
    assert vol.image[..., 0][vol.brain].min() < -50 and vol.image[..., 0].max() > 50


def test_a_flair_covering_less_than_the_t1_is_fitted_on_its_own_signal(shared_data):
    """Brats18_2013_20_1's FLAIR is 0 in a third of the T1's brain (fewer slices): fitted on the
    whole T1 brain, the largest peak would be that 0, and the stripe empty."""
    subject = "Brats18_2013_20_1"
    files = _files(shared_data, subject, ("t1", "flair"))
    spec = _data(channels=("flair",), reference="t1")
    vol = samples.load_on_grid(Subject(subject, 0, "HGG", files), spec)
    brain, flair = _array(files["t1"]) != 0, _array(files["flair"])
    assert (flair[brain] == 0).mean() > 0.3
    theirs = _package(files["flair"], brain & (flair != 0), "flair")[brain]
    ours = vol.image[..., 0][vol.brain]
    np.testing.assert_allclose(np.sort(ours), np.sort(theirs), rtol=1e-6, atol=1e-4)
    with pytest.raises(whitestripe.StripeError, match="No voxels found in white stripe"):
        whitestripe.fit(flair[brain], "flair")  # the zeros left in


def test_t1c_takes_the_t1_rule_and_its_stripe_lies_at_the_t1s_white_matter(shared_data):
    files = _files(shared_data, mods=("t1", "t1c", "seg"))
    t1, t1c, seg = (_array(files[m]) for m in ("t1", "t1c", "seg"))
    brain = (t1 > 0) & (t1c > 0)
    assert whitestripe.contrast_of("t1c") == whitestripe.contrast_of("T1c") == "t1"
    t1_stripe, _ = whitestripe.fit(t1[brain], "t1")
    _, in_t1c = whitestripe.fit(t1c[brain], "t1")
    t1_units = (t1[brain] - t1_stripe.mean) / t1_stripe.std
    # the T1c stripe's voxels, seen on the T1: at its white-matter stripe (0), far from the
    # grey-matter side of the brain (its 35th percentile, -13 here)
    assert abs(np.median(t1_units[in_t1c])) < 3 < -np.percentile(t1_units, 35) / 4
    enhancing = seg[brain] == 4  # BraTS label 4: enhancing tumour
    assert (in_t1c & enhancing).sum() / in_t1c.sum() < 0.01


def test_the_fit_ignores_the_background_of_an_image_with_negative_values(shared_data):
    """WhiteStripe does not depend on an intensity offset, also one that puts 0 in the stripe.

    The package's own masked fit counts the zeros outside the mask into the stripe there (its
    bounds are then -4 and 5 around a mean of 0.5, and the result is off by hundreds): ernjax
    fits the brain's voxels alone.
    """
    t1 = _array(_files(shared_data)["t1"])
    brain = t1 > 0
    stripe, _ = whitestripe.fit(t1[brain], "t1")
    assert 0.08 < stripe.fraction <= 0.1 + 1e-3  # the stripe: +/- 0.05 quantile of the brain
    offset = np.float32(round(stripe.mean))
    shifted = (t1 - offset) * brain  # integers still: exact
    moved, _ = whitestripe.fit(shifted[brain], "t1")
    assert moved.low < 0 < moved.high
    # the same stripe, moved: (x - mean) / std, hence the normalized image, are the same
    assert moved.mean == pytest.approx(stripe.mean - offset, abs=1e-4)
    assert moved.std == pytest.approx(stripe.std, rel=1e-6)
    assert (moved.low, moved.high) == (stripe.low - offset, stripe.high - offset)


def test_too_few_intensity_levels_refuse_the_subject_naming_the_file(shared_data):
    """Brats18_2013_3_1's T1c holds 206 distinct values: no voxel lies inside the stripe."""
    subject = "Brats18_2013_3_1"
    files = _files(shared_data, subject, ("t1c",))
    spec = _data(channels=("t1c",), reference="t1c")
    with pytest.raises(InputError) as err:
        samples.load_on_grid(Subject(subject, 0, "HGG", files), spec)
    assert err.value.subject == subject and err.value.path == str(files["t1c"])
    assert "206 distinct intensities" in err.value.problem
    assert "with zscore or minmax, or leave this subject out" in err.value.problem


def test_the_records_name_changes_with_whitestripe(tmp_path):
    (tmp_path / "labels.csv").write_text("subject_id,label\n")
    names = {records.dataset_name(_data(normalize=n), tmp_path) for n in geo.NORMALIZATIONS}
    assert len(names) == 3


def _config(**data):
    config = configs.ern.get_config("tiny")
    config.data.update(data)
    return config


def test_the_config_check_refuses_a_contrast_whitestripe_does_not_know():
    mods = {"t1": "*_t1.nii.gz", "adc": "*_adc.nii.gz"}
    config = _config(normalize="whitestripe", modalities=mods, channels=("t1", "adc"))
    with pytest.raises(check.ConfigError) as err:
        check.check_config(config)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("config.data.normalize='whitestripe' finds the white matter")
    assert "'adc'" in message and "--config.data.normalize=zscore" in message
    assert "T1: t1, t1n, t1w, t1c, t1ce, t1gd" in message
    with pytest.raises(check.ConfigError, match=r"config.data.normalize='white' is not a norm"):
        check.check_config(_config(normalize="white"))
    check.check_config(_config(normalize="whitestripe", channels=MODS))  # all four are known
    radiomics = _config(normalize="whitestripe", modalities=mods, channels=("t1",))
    radiomics.model.name = "radiomics"  # its features normalize every modality, channel or not
    with pytest.raises(check.ConfigError, match=r"'adc' \(of config.data.modalities: the radi"):
        check.check_config(radiomics)


def test_preprocessing_refuses_an_unknown_contrast_before_any_work(tmp_path):
    s = base_config().data.preprocess
    s.steps, s.normalize = ("reorient", "normalize"), "whitestripe"
    out = tmp_path / "out"
    with pytest.raises(check.ConfigError, match=r"preprocess.normalize='whitestripe'.*'pd'"):
        runner.preprocess_cohort(tmp_path, out, modalities={"pd": "*_pd.nii.gz"}, settings=s)
    assert not out.exists()


def test_preprocessing_normalizes_as_the_package(shared_data, tmp_path):
    files = _files(shared_data, mods=("t1c", "flair"))
    raw = tmp_path / "raw" / SUBJECT
    raw.mkdir(parents=True)
    for path in files.values():
        (raw / path.name).symlink_to(path)
    s = base_config().data.preprocess
    s.steps, s.normalize, s.qc = ("normalize",), "whitestripe", False
    mods = {m: f"*_{m}.nii.gz" for m in files}
    out = tmp_path / "out"
    summary = runner.preprocess_cohort(raw.parent, out, modalities=mods, settings=s, progress=False)
    assert summary.ok, summary.failed
    for m, path in files.items():
        brain = _array(path) > 0  # without skull stripping the step's region is the non-zero one
        ours = _array(out / SUBJECT / f"{SUBJECT}_{m}.nii.gz")
        np.testing.assert_allclose(
            ours[brain], _package(path, brain, PACKAGE_MODALITY[m])[brain], rtol=1e-6, atol=1e-4
        )
        assert not ours[~brain].any()


def test_the_qc_figure_windows_the_negative_half_of_a_normalized_image():
    raw = np.array([0.0, 10.0, 20.0, 200.0])
    assert qc.window(raw)[0] == 0.0  # raw or min-max: from 0, as before
    vmin, vmax = qc.window(np.linspace(-90, 140, 1001))  # WhiteStripe's units: WM at 0
    assert vmin == pytest.approx(-88.85) and vmax == pytest.approx(138.85)
