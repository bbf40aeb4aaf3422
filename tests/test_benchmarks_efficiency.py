"""benchmarks.model_efficiency: one tiny row, FLOP/MAC counting on known layers, the ratios."""

import pytest
from flax import nnx

from benchmarks import model_efficiency as me
from ernjax.models import create_model, layers


def test_measure_tiny_row():
    row = me.measure(me.Case("ern_tiny", "ern_tiny", (32, 32)), batch=2, repeats=1)
    assert row["input"] == "32x32x3" and row["batch"] == 2
    for key in ("params", "GFLOPs (XLA)", "GMACs", "conv+dense GMACs", "compile_s"):
        assert row[key] > 0, key
    assert row["latency_ms"] > 0 and row["throughput"] > 0
    assert row["GMACs"] == pytest.approx(row["GFLOPs (XLA)"] / 2)


class TwoConvs(nnx.Module):
    """A 3x3 conv (3 -> 8) and a depthwise 3x3 conv on the 8 channels, nothing else."""

    def __init__(self):
        self.conv = layers.conv(3, 8, 3, spatial_dims=2, rngs=nnx.Rngs(0))
        self.dw = layers.conv(8, 8, 3, spatial_dims=2, groups=8, rngs=nnx.Rngs(1))

    def __call__(self, x):
        return self.dw(self.conv(x))


def test_counts_on_known_layers():
    model = TwoConvs()
    # per output pixel: 8 * 3*3*3 MACs for the conv, 8 * 3*3 for the depthwise conv (which runs
    # as shifted slices on the CPU, yet still counts)
    expected = 16 * 16 * (8 * 27 + 8 * 9)
    assert me.conv_dense_macs(model, (16, 16), 3) == expected
    assert me.forward_flops(model, (16, 16), 3) == pytest.approx(2 * expected, rel=0.1)
    assert model.dw.conv_general_dilated is layers.conv_general_dilated  # untouched


def test_xla_skips_padding_taps():
    # XLA's cost analysis counts 2 FLOPs per multiply-add, but only the taps inside the input:
    # a "SAME" 3x3 conv on 16 px has 46 of 48 taps per axis inside (the papers count all 48).
    conv = layers.conv(3, 8, 3, spatial_dims=2, rngs=nnx.Rngs(0))
    assert me.conv_dense_macs(conv, (16, 16), 3) == 16 * 16 * 8 * 27
    assert me.forward_flops(conv, (16, 16), 3) == 2 * 8 * 27 * 46 * 46 / 9


def test_flops_scale_with_pixels():
    model = create_model("resnet10_tiny", in_channels=1, num_classes=2, rngs=nnx.Rngs(0))
    model.eval()
    small, large = (me.forward_flops(model, (s, s), 1) for s in (32, 64))
    assert 3.5 < large / small < 4.6
    small, large = (me.conv_dense_macs(model, (s, s), 1) for s in (32, 64))
    assert large / small == pytest.approx(4, rel=0.01)


def test_ratios_and_gao_paragraph():
    def row(name, params, macs, ms, thr):
        return {"model": name, "params": params, "Mparams": params / 1e6, "GFLOPs (XLA)": 2 * macs,
                "GMACs": macs, "conv+dense GMACs": macs, "latency_ms": ms, "batch": 8,
                "throughput": thr}  # fmt: skip

    rows = [row("inception_v3", 24e6, 5.7, 40.0, 30.0), row("ern_b1", 7.8e6, 0.7, 20.0, 45.0)]
    me.add_ratios(rows)
    assert rows[0]["params ratio"] == rows[0]["throughput ratio"] == 1
    assert rows[1]["params ratio"] == pytest.approx(24 / 7.8)
    assert rows[1]["MACs ratio"] == pytest.approx(5.7 / 0.7)
    assert rows[1]["latency ratio"] == 2 and rows[1]["throughput ratio"] == 1.5
    text = me.gao_paragraph(rows)
    assert "3.08x smaller, which reproduces" in text and "8.14x fewer, which reproduces" in text
    assert "2.00x faster" in text
    assert "measure both" in me.gao_paragraph(rows[1:])


def test_cases_flag_names():
    got = me.cases(["ern_b1", "resnet10_3d"], 32)
    assert [c.shape for c in got] == [(240, 240), (32, 32, 32)]
    assert (got[1].channels, got[1].classes) == (4, 2)
    with pytest.raises(ValueError, match="unknown"):
        me.cases(["nope"], 32)
