"""init_from: PyTorch (MONAI, MedicalNet) files and ernjax checkpoints into ernjax models."""

import json

import grain.python as grain
import jax
import numpy as np
import pytest
from flax import nnx

from ernjax import checkpoints
from ernjax.errors import InputError
from ernjax.models import create_model, pretrained


def tiny(in_channels=4, num_classes=3, seed=0, **kw):
    """ResNet-10 at 1/8 width, 3D (8, 16, 32, 64 channels)."""
    return create_model(
        "resnet10_tiny",
        in_channels=in_channels,
        num_classes=num_classes,
        spatial_dims=3,
        rngs=nnx.Rngs(seed),
        **kw,
    )


def flat(model) -> dict[str, np.ndarray]:
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


# ----------------------------------------------------------------------------- no torch needed
def test_no_path_keeps_the_random_init():
    report = pretrained.init_from(tiny(), None)
    assert report.source == "none" and not report.loaded
    assert "random initialization" in report.summary()


def test_missing_file_is_an_input_error_naming_the_path(tmp_path):
    missing = tmp_path / "nope" / "resnet_10.pth"
    with pytest.raises(InputError, match="not found") as err:
        pretrained.init_from(tiny(), missing)
    assert str(missing) in str(err.value)


def test_directory_without_checkpoints_is_an_error(tmp_path):
    with pytest.raises(InputError, match="neither a PyTorch weight file nor an ernjax run"):
        pretrained.init_from(tiny(), tmp_path)


def test_first_conv_rule():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 3, 5)).astype(np.float32)  # [*k, C_file=3, O]
    np.testing.assert_allclose(pretrained.adapt_first_conv(w, 1), w.sum(-2, keepdims=True))
    four = pretrained.adapt_first_conv(w[..., :1, :], 4)
    np.testing.assert_allclose(four, np.repeat(w[..., :1, :] / 4, 4, axis=-2))
    two = pretrained.adapt_first_conv(w, 2)  # response to equal channels is kept
    x = rng.standard_normal(9 * 5).reshape(3, 3, 1, 5).astype(np.float32)
    np.testing.assert_allclose((two * x).sum(), (w * x).sum(), rtol=1e-5)


def _iterator():
    return iter(
        grain.DataLoader(
            data_source=list(range(4)),
            sampler=grain.IndexSampler(4, shard_options=grain.NoSharding(), num_epochs=1, seed=0),
            operations=[grain.Batch(2)],
        )
    )


def test_ernjax_checkpoint_round_trip_takes_the_best_step(tmp_path):
    ckpt = checkpoints.Checkpointer(tmp_path / "run" / "checkpoints", keep=2, async_save=False)
    saved = {}
    for step, (seed, auc) in enumerate([(1, 0.9), (2, 0.6)], start=1):
        model = tiny(seed=seed, dropout=0.2)  # dropout: an RNG state in the checkpoint too
        saved[step] = flat(model)
        progress = checkpoints.Progress(step=step, best_metric=0.9, best_step=1)
        ckpt.save(step, {"model": nnx.state(model)}, _iterator(), progress, "{}", score=auc)
    ckpt.close()

    model = tiny(seed=7, dropout=0.2)
    report = pretrained.init_from(model, tmp_path / "run")
    assert (report.source, report.step) == ("ernjax", 1)
    assert not (report.adapted or report.new or report.unused)
    got = flat(model)
    assert sorted(report.loaded) == sorted(got)
    for name, value in saved[1].items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)

    # The checkpoints directory itself works too; 2 classes instead of 3: head kept fresh.
    fresh = tiny(num_classes=2, seed=7)
    before = flat(fresh)["fc.kernel"]
    report = pretrained.init_from(fresh, tmp_path / "run" / "checkpoints")
    assert set(report.new) == {"fc.kernel", "fc.bias"}
    assert "3 classes" in report.new["fc.kernel"]
    np.testing.assert_array_equal(flat(fresh)["fc.kernel"], before)

    # A wider model: an error naming the tensor and both shapes, and the model untouched.
    wide = create_model(
        "resnet10", in_channels=4, num_classes=3, spatial_dims=3, rngs=nnx.Rngs(0),
        widen_factor=0.25,
    )  # fmt: skip
    untouched = flat(wide)
    with pytest.raises(InputError, match=r"layer1\.0\.conv1\.kernel.*\(3, 3, 3, 8, 8\).*16"):
        pretrained.init_from(wide, tmp_path / "run")
    for name, value in flat(wide).items():
        np.testing.assert_array_equal(value, untouched[name])


def test_ernjax_run_scored_with_the_last_checkpoint_gives_the_last_step(tmp_path):
    ckpt = checkpoints.Checkpointer(tmp_path / "checkpoints", keep=2, async_save=False)
    config = json.dumps({"train": {"select_checkpoint": "last"}})
    for step, auc in [(1, 0.9), (2, 0.6)]:
        progress = checkpoints.Progress(step=step, best_metric=0.9, best_step=1)
        model = tiny(seed=step)
        ckpt.save(step, {"model": nnx.state(model)}, _iterator(), progress, config, score=auc)
    assert ckpt.scored_step("last") == (2, "last (config.train.select_checkpoint)")
    assert ckpt.scored_step("best")[0] == 1
    ckpt.close()
    report = pretrained.init_from(tiny(seed=7), tmp_path)
    assert report.step == 2


# ----------------------------------------------------------------------------- PyTorch files
@pytest.fixture
def monai_resnet10():
    """MONAI's resnet10 at 1/8 width, 3D, 1 channel, 2 classes, non-trivial BatchNorms."""
    torch = pytest.importorskip("torch")
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    tm = nets.resnet10(spatial_dims=3, n_input_channels=1, num_classes=2, widen_factor=0.125)
    for m in tm.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 1.5)
    return tm


def _to_flax(key, value, ndim):
    from ernjax.models.convert import to_flax_array

    return to_flax_array(value.numpy(), ndim)


def test_monai_file_one_channel_into_four_channels_and_three_classes(tmp_path, monai_resnet10):
    torch = pytest.importorskip("torch")
    file = tmp_path / "resnet10_monai.pt"
    sd = monai_resnet10.state_dict()
    torch.save(sd, file)
    model = tiny(in_channels=4, num_classes=3)
    fresh = flat(model)
    report = pretrained.init_from(model, str(file))
    got = flat(model)

    assert report.source == "monai"
    assert list(report.adapted) == ["conv1.kernel"]
    assert set(report.new) == {"fc.kernel", "fc.bias"} and not report.unused
    assert len(report.loaded) == len(got) - 3
    w = _to_flax("conv1.weight", sd["conv1.weight"], 5)  # [7, 7, 7, 1, 8]
    np.testing.assert_allclose(got["conv1.kernel"], np.repeat(w, 4, axis=-2) / 4, rtol=1e-6)
    for name in ("fc.kernel", "fc.bias"):
        np.testing.assert_array_equal(got[name], fresh[name])
    np.testing.assert_array_equal(
        got["layer2.0.downsample.conv.kernel"],
        _to_flax("", sd["layer2.0.downsample.0.weight"], 5),
    )
    np.testing.assert_array_equal(got["layer3.0.bn1.var"], sd["layer3.0.bn1.running_var"])

    # Equal modalities see what the 1-channel network saw: the same feature maps.
    one = tiny(in_channels=1, num_classes=2)
    assert not pretrained.init_from(one, file).adapted
    x = np.random.default_rng(0).standard_normal((1, 16, 16, 16, 1)).astype(np.float32)
    model.eval(), one.eval()
    np.testing.assert_allclose(
        model.features(np.repeat(x, 4, axis=-1)), one.features(x), rtol=1e-4, atol=1e-5
    )

    out = tmp_path / "init_report.json"
    report.write_json(out)
    saved = json.loads(out.read_text())
    assert saved["counts"] == {"loaded": len(got) - 3, "adapted": 1, "new": 2, "unused": 0}
    assert "adapted 1: conv1.kernel (input channels 1 -> 4" in report.summary()


def test_medicalnet_file_loads(tmp_path, monai_resnet10):
    torch = pytest.importorskip("torch")
    sd = {f"module.{k}": v for k, v in monai_resnet10.state_dict().items() if "fc" not in k}
    sd["module.conv_seg.0.weight"] = torch.zeros(64, 32, 2, 2, 2)  # its segmentation head
    sd["module.conv_seg.1.weight"] = torch.ones(32)
    file = tmp_path / "resnet_10.pth"
    torch.save({"state_dict": sd, "epoch": 3}, file)
    model = tiny(in_channels=1, num_classes=2)
    report = pretrained.init_from(model, file)
    assert report.source == "medicalnet"
    assert sorted(report.unused) == ["conv_seg.0.weight", "conv_seg.1.weight"]
    assert set(report.new) == {"fc.kernel", "fc.bias"}
    assert all("not in the file" in why for why in report.new.values())
    assert not report.adapted
    np.testing.assert_array_equal(
        flat(model)["layer4.0.conv2.kernel"],
        _to_flax("", sd["module.layer4.0.conv2.weight"], 5),
    )
    # Naming the layout explicitly works; an unknown one is an error.
    assert pretrained.init_from(model, file, source="torchvision").source == "torchvision"
    with pytest.raises(ValueError, match="unknown init_from source 'hub'"):
        pretrained.init_from(model, file, source="hub")


def test_mismatched_shape_names_tensor_file_and_shapes(tmp_path, monai_resnet10):
    torch = pytest.importorskip("torch")
    file = tmp_path / "resnet10.pt"
    torch.save(monai_resnet10.state_dict(), file)
    model = create_model(
        "resnet10", in_channels=1, num_classes=2, spatial_dims=3, rngs=nnx.Rngs(0),
        widen_factor=0.25,
    )  # fmt: skip
    with pytest.raises(InputError) as err:
        pretrained.init_from(model, file)
    msg = str(err.value)
    assert str(file) in msg
    assert "layer1.0.conv1.weight -> layer1.0.conv1.kernel" in msg
    assert "file shape (3, 3, 3, 8, 8) vs model shape (3, 3, 3, 16, 16)" in msg
    with pytest.raises(InputError, match="3D kernel for a 2D model"):
        two_d = create_model(
            "resnet10_tiny", in_channels=1, num_classes=2, spatial_dims=2, rngs=nnx.Rngs(0)
        )
        pretrained.init_from(two_d, file)


def test_file_with_unrelated_keys_is_an_error(tmp_path):
    torch = pytest.importorskip("torch")
    file = tmp_path / "other.pt"
    torch.save({"encoder.proj.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}, file)
    with pytest.raises(InputError, match="none of its 2 tensors fits the resnet model") as err:
        pretrained.init_from(tiny(), file)
    assert str(file) in str(err.value) and "encoder.proj.weight" in str(err.value)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot read as a PyTorch state dict"):
        pretrained.init_from(tiny(), bad)


def test_trainer_call_and_report_file(tmp_path, monai_resnet10):
    """The trainer's exact call, then its log line and WORKDIR/init_report.json."""
    torch = pytest.importorskip("torch")
    file = tmp_path / "w.pth.tar"
    torch.save({"state_dict": monai_resnet10.state_dict()}, file)
    model = tiny(in_channels=1, num_classes=2)
    report = pretrained.init_from(model, str(file))
    assert report.loaded and not report.new and not report.adapted
    report.write_json(tmp_path / "init_report.json")
    assert json.loads((tmp_path / "init_report.json").read_text())["path"] == str(file)
    assert jax.tree.leaves(nnx.state(model))  # still a usable model


def test_torchvision_densenet_old_and_new_key_spellings_map():
    from ernjax.models.convert import DENSENET_TORCHVISION, torch_to_flax_name

    for old in (
        "features.denseblock1.denselayer2.norm.1",
        "features.denseblock1.denselayer2.norm1",
    ):
        assert torch_to_flax_name(old, DENSENET_TORCHVISION) == "denseblock1.denselayer2.norm1"
    conv = torch_to_flax_name("features.denseblock3.denselayer1.conv.2", DENSENET_TORCHVISION)
    assert conv == "denseblock3.denselayer1.conv2"
