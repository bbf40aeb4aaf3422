"""ernjax.gradcam: shapes and range, the maths against a hand computation, intermediate layers,
a trained model looking at the right place, the PNG overlays and NIfTI maps in world space."""

import jax
import model_helpers
import nibabel as nib
import numpy as np
import optax
import pytest
from flax import nnx
from jax import numpy as jnp
from matplotlib import image as mpimg
from model_helpers import rand

from ernjax import gradcam as gc
from ernjax.data import samples
from ernjax.data.cohort import Subject
from ernjax.defaults import base_config


def build(name="resnet10_tiny", spatial_dims=2, in_channels=2, **kw):
    """Two-channel tiny models by default (`model_helpers.build` otherwise)."""
    return model_helpers.build(name, spatial_dims, in_channels, **kw)


def reference_cam(acts, grads, size):
    """Grad-CAM written out in numpy, from a feature map and its gradient."""
    acts, grads = np.asarray(acts), np.asarray(grads)
    weights = grads.mean(axis=tuple(range(1, acts.ndim - 1)), keepdims=True)
    cam = np.maximum((weights * acts).sum(-1), 0)
    cam = np.maximum(np.asarray(jax.image.resize(cam, (cam.shape[0], *size), "linear")), 0)
    peak = cam.reshape(len(cam), -1).max(1).reshape(-1, *[1] * len(size))
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0)


@pytest.mark.parametrize(
    "name, spatial, layer, options",
    [
        ("resnet10_tiny", (32, 32), None, {}),
        ("resnet10_tiny", (16, 16, 16), None, {"no_max_pool": True}),  # 2x2x2 feature map
        ("resnet10_tiny", (16, 16, 16), "layer2", {}),
        ("ern_tiny", (32, 32), "blocks.3", {}),  # an MBConv block at stride 16: 2x2
    ],
)
def test_shapes_range_and_caller_model_untouched(name, spatial, layer, options):
    model = build(name, spatial_dims=len(spatial), **options)
    cam = gc.gradcam(model, rand(2, *spatial, 2), layer=layer)
    assert cam.shape == (2, *spatial) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() <= 1 + 1e-6
    peaks = cam.reshape(2, -1).max(1)
    assert np.all(np.isclose(peaks, 1) | (peaks == 0))
    # eval mode and the tap live in a private copy: the caller's model is still training
    assert not model.dropout.deterministic
    assert all(type(m).__name__ != "_Tap" for _, m in nnx.iter_modules(model))


def test_matches_direct_computation_and_closed_form():
    model = build(num_classes=3)
    x = rand(2, 32, 32, 2, seed=1)
    model.eval()
    feats = model.features(x)
    logits = model.classify(feats)
    targets = [0, 2]
    # d logit_t / d features one example at a time, by hand
    grads = jnp.stack(
        [
            jax.grad(lambda f, b=b, t=t: model.classify(f)[b, t])(feats)[b]
            for b, t in enumerate(targets)
        ]
    )
    want = reference_cam(feats, grads, (32, 32))
    model.train()
    got = gc.gradcam(model, x, target_class=targets)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # GAP + dense: the weights are the dense kernel column over the map size (CAM, Zhou 2016)
    kernel = np.asarray(model.fc.kernel[...])
    n = feats.shape[1] * feats.shape[2]
    np.testing.assert_allclose(grads.mean(axis=(1, 2)), kernel[:, targets].T / n, rtol=1e-4)
    # None explains the predicted class
    pred = np.asarray(logits.argmax(-1))
    np.testing.assert_allclose(
        gc.gradcam(model, x), gc.gradcam(model, x, target_class=pred), atol=1e-6
    )


def resnet_stem_to_layer3(model, x):
    x = jax.nn.relu(model.bn1(model.conv1(x)))
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1)] * 2)
    for stage in (model.layer1, model.layer2, model.layer3):
        for blk in stage:
            x = blk(x)
    return x


def test_intermediate_layer_against_split_forward_and_finite_differences():
    model = build()
    x = rand(2, 64, 64, 2, seed=2)
    # layer4 (a list: its last block) is the features output, so the tap must agree with it
    default = gc.gradcam(model, x)
    for name in ("layer4", "layer4.0", "layer4.-1"):
        np.testing.assert_allclose(gc.gradcam(model, x, layer=name), default, atol=1e-6)

    model.eval()
    a3 = resnet_stem_to_layer3(model, x)

    def logit(a):  # target class 1 of both examples, from layer3's output on
        return model.classify(model.layer4[0](a))[:, 1].sum()

    grads = jax.grad(logit)(a3)
    want = reference_cam(a3, grads, (64, 64))
    np.testing.assert_allclose(gc.gradcam(model, x, 1, layer="layer3"), want, atol=1e-5)
    # the gradient itself, against a central difference along a random direction
    v = rand(*a3.shape, seed=3)
    eps = 1e-2
    finite = (logit(a3 + eps * v) - logit(a3 - eps * v)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(grads, v)), float(finite), rtol=2e-2)


def test_bad_layer_and_target_are_clear_errors():
    model = build()
    x = rand(1, 32, 32, 2)
    with pytest.raises(ValueError, match=r"unknown layer 'layer9' .*layer1.*layer3\.0"):
        gc.gradcam(model, x, layer="layer9")
    with pytest.raises(ValueError, match=r"unknown layer 'layer1.5'"):
        gc.gradcam(model, x, layer="layer1.5")
    with pytest.raises(ValueError, match=r"layer 'fc' outputs \(1, 2\), not a feature map"):
        gc.gradcam(model, x, layer="fc")
    with pytest.raises(ValueError, match=r"target_class 2 outside 0..1"):
        gc.gradcam(model, x, target_class=2)


SIZE, ROWS, COLS = 32, slice(8, 16), slice(16, 24)  # the square: one cell of a 4x4 feature map


def square_batch(rng, n):
    """Noise; class 1 adds a bright square at a fixed place."""
    x = rng.normal(0, 0.3, (n, SIZE, SIZE, 1)).astype(np.float32)
    y = rng.integers(0, 2, n)
    x[y == 1, ROWS, COLS] += 1.5
    return jnp.asarray(x), jnp.asarray(y)


def test_trained_model_looks_at_the_square():
    model = build(in_channels=1, no_max_pool=True)  # stride 8: a 4x4 map at 32x32
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        value, grads = nnx.value_and_grad(loss)(model)
        opt.update(model, grads)
        return value

    rng = np.random.default_rng(0)
    for _ in range(40):
        step(model, opt, *square_batch(rng, 16))
    x, y = square_batch(rng, 32)
    pos = np.asarray(y) == 1
    model.eval()
    assert float((model(x).argmax(-1) == y).mean()) == 1.0
    cam = gc.gradcam(model, x, target_class=1)[pos]
    inside = np.zeros((SIZE, SIZE), bool)
    inside[ROWS, COLS] = True
    mass = cam[:, inside].sum() / cam.sum()
    # measured 0.14 of the mass on 0.0625 of the area (a 4x4 map upsampled linearly spreads
    # even a one-cell map: the ideal is 0.56); the peak sits in the square
    assert mass > 1.6 * inside.mean(), mass
    peaks = [np.unravel_index(c.argmax(), c.shape) for c in cam]
    grown = np.zeros_like(inside)
    grown[ROWS.start - 1 : ROWS.stop + 1, COLS.start - 1 : COLS.stop + 1] = True
    assert np.mean([grown[p] for p in peaks]) >= 0.9, peaks


def test_overlay_png_2d_and_3d(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.random((24, 20, 3)).astype(np.float32)
    cam = np.zeros((24, 20), np.float32)
    cam[5:10, 4:8] = 1
    assert gc.overlay_png(rgb, cam, tmp_path / "slice.png", title="s1") == ()
    gc.overlay_png(rgb, cam, tmp_path / "t2.png", channel=1)
    vol = np.zeros((16, 12, 12, 2), np.float32)
    vol[3:13, 2:10, 2:10] = rng.random((10, 8, 8, 2))
    cam3 = np.zeros((16, 12, 12), np.float32)
    cam3[6:9, 4:8, 4:8] = 0.8
    drawn = gc.overlay_png(vol, cam3, tmp_path / "vol" / "grid.png", num_slices=4)
    assert drawn == (3, 6, 9, 12)  # evenly through the non-zero (brain) slices 3..12
    mask = np.zeros((16, 12, 12), bool)
    mask[7:9, 5, 5] = True
    assert gc.overlay_png(vol, cam3, tmp_path / "m.png", num_slices=2, extent=mask) == (7, 8)
    for name in ("slice.png", "t2.png", "vol/grid.png", "m.png"):
        png = mpimg.imread(tmp_path / name)
        assert png.ndim == 3 and png.shape[0] > 100 and png.shape[1] > 100
    assert (tmp_path / "slice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="do not match"):
        gc.overlay_png(vol, cam3[:, :5], tmp_path / "bad.png")


def test_nifti_bright_voxel_lands_at_its_world_coordinate(tmp_path):
    # a (d, h, w) -> RAS affine as samples builds it: z, then y and x reversed, scaled, shifted
    affine = np.array(
        [[0.0, 0.0, -1.5, 20.0], [0.0, -1.25, 0.0, 15.0], [2.0, 0.0, 0.0, -30.0], [0, 0, 0, 1]]
    )
    cam = np.zeros((6, 10, 8), np.float32)
    dhw = (4, 2, 5)
    cam[dhw] = 1.0
    written = gc.save_cam_nifti(cam, affine, tmp_path / "cam.nii.gz")
    img = nib.load(tmp_path / "cam.nii.gz")
    data = np.asarray(img.dataobj)
    assert data.shape == (8, 10, 6)  # (x, y, z): the flips and the transpose undone
    ijk = np.unravel_index(data.argmax(), data.shape)
    world = img.affine @ [*ijk, 1]
    np.testing.assert_allclose(world, affine @ [*dhw, 1], atol=1e-5)
    np.testing.assert_allclose(np.diag(img.affine)[:3], [1.5, 1.25, 2.0])  # RAS+ array order
    np.testing.assert_allclose(written.affine, img.affine, atol=1e-6)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    with pytest.raises(ValueError, match=r"expected a 3D map"):
        gc.save_cam_nifti(cam[None], affine, tmp_path / "bad.nii.gz")


def test_nifti_back_on_the_original_scan_through_samples(tmp_path):
    """A map on the model's grid goes back over an LPS-stored scan, voxel for voxel."""
    shape = (20, 24, 14)
    ras = np.diag([1.2, 1.0, 2.5, 1.0])
    ras[:3, 3] = [-12, -14, -9]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    xyz = ijk @ ras[:3, :3].T + ras[:3, 3]
    brain = (((xyz - [0.5, 1.0, 2.0]) / [9.0, 10.0, 12.0]) ** 2).sum(-1) < 1
    centre = np.array([4.0, -3.0, 5.0])  # the blob, world mm
    blob = np.exp(-(((xyz - centre) / [2.0, 2.0, 3.0]) ** 2).sum(-1))
    data = (brain * (100 + 300 * blob)).astype(np.float32)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # stored LPS: x and y reversed
    flip[:2, 3] = np.array(shape[:2]) - 1
    path = tmp_path / "s1" / "s1_t1.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(data[::-1, ::-1].copy(), ras @ flip), str(path))

    d = base_config().data
    d.kind, d.modalities = "volumes3d", {"t1": "*_t1.nii.gz"}
    d.channels, d.reference, d.shape = ("t1",), "t1", (12, 16, 16)
    vol = samples.load_subject(Subject("s1", 1, "recurrence", {"t1": path}), d)
    cam = vol.image[..., 0] ** 4  # a "map" peaked on the blob, on the model's input grid
    out = gc.save_cam_nifti(cam, vol.affine, tmp_path / "cam.nii.gz", reference=path)
    stored = nib.load(path)
    assert out.data.shape == stored.shape
    np.testing.assert_allclose(nib.load(tmp_path / "cam.nii.gz").affine, stored.affine, atol=1e-5)
    peak = np.unravel_index(out.data.argmax(), out.data.shape)
    scan_peak = np.unravel_index(np.asarray(stored.dataobj).argmax(), stored.shape)
    world = stored.affine @ [*peak, 1]
    assert np.linalg.norm(world[:3] - centre) < 2.6, (world, peak, scan_peak)
    assert np.all(np.abs(np.subtract(peak, scan_peak)) <= 1), (peak, scan_peak)
