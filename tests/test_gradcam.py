"""ernjax.gradcam: shapes and range, the maths against a hand computation, intermediate layers,
a trained model looking at the right place, the pictures (size, greyscale underlay, heat masked
to the brain, lesion outline, orientation letters on an asymmetric LPS scan, 3D views through
the peak or the lesion, the underlay choice) and NIfTI maps in world space."""

import types

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
from ernjax import inference
from ernjax.data import samples
from ernjax.data.cohort import Subject
from ernjax.defaults import base_config
from ernjax.errors import InputError


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


def _png(path):
    """The PNG's RGB pixels, floats in [0, 1]."""
    return mpimg.imread(path)[..., :3]


def _crop(png, box):
    left, top, right, bottom = box
    return png[top:bottom, left:right]


def _grey(rgb):
    return np.all(np.abs(rgb - rgb[..., :1]) < 1e-6, axis=-1)


def brain_slice():
    """A 40x48 slice: a disc of 'brain' with texture, a lesion in it, background zeros."""
    rr, cc = np.mgrid[:40, :48]
    brain = ((rr - 20) / 17.0) ** 2 + ((cc - 24) / 21.0) ** 2 < 1
    image = brain * (0.3 + 0.4 * np.random.default_rng(0).random((40, 48)))
    lesion = ((rr - 14) ** 2 + (cc - 30) ** 2) < 16
    return image.astype(np.float32), brain, lesion


def test_overlay_png_is_large_grey_where_no_heat_and_masked_to_the_brain(tmp_path):
    image, brain, lesion = brain_slice()
    cam = np.zeros(image.shape, np.float32)
    cam[:, :24] = 1.0  # heat over the left half, brain and background alike
    got = gc.overlay_png(image, cam, tmp_path / "s.png", lesion=lesion, title="P1 · slice 3")
    png = _png(tmp_path / "s.png")
    assert png.shape[1] == got.size[0] >= 600 and png.shape[0] == got.size[1]
    (box,) = got.boxes
    assert box[2] - box[0] >= 550  # the slice itself is drawn large, not just the canvas
    # the panel as drawn, and the PNG's pixels of it: the same picture
    rgb = gc.panel_rgb(got.panels[0], 640)
    panel = _crop(png, box)
    assert abs(panel.shape[1] - rgb.shape[1]) <= 2 and abs(panel.shape[0] - rgb.shape[0]) <= 2
    # heat (cam 1) on the brain's left half: coloured; its right half (cam 0): grey
    rows, cols = rgb.shape[:2]
    mid = (slice(rows // 3, 2 * rows // 3), slice(cols // 4 - 10, cols // 4 + 10))
    right = (slice(rows // 2 - 5, rows // 2 + 5), slice(3 * cols // 4, 3 * cols // 4 + 10))
    assert not _grey(rgb[mid]).any()
    assert _grey(rgb[right]).all()
    # outside the brain the map is 1 but not drawn: the background is grey (black)
    corner = rgb[:6, :6]
    assert _grey(corner).all() and corner.max() == 0
    # the same in the PNG itself (away from the letters at the edges' middles)
    p_rows, p_cols = panel.shape[:2]
    assert _grey(panel[p_rows // 2 - 5 : p_rows // 2 + 5, 3 * p_cols // 4 :][:, :10]).all()
    assert not _grey(panel[p_rows // 3 : 2 * p_rows // 3, p_cols // 4 - 5 : p_cols // 4 + 5]).any()
    # the lesion outline: pure green pixels, and none without a mask
    green = np.all(np.abs(panel - gc.LESION_RGB) < 0.02, axis=-1)
    assert green.sum() > 50
    assert got.title == "P1 · slice 3"
    flat = gc.overlay_png(image, np.ones_like(cam), tmp_path / "n.png")  # and no mask
    assert flat.title == "the map is uniform over the brain: it does not localise"
    assert not np.all(np.abs(_png(tmp_path / "n.png") - gc.LESION_RGB) < 0.02, axis=-1).any()


def test_heat_below_the_floor_is_not_drawn_and_opacity_rises_with_the_map():
    image, brain, _ = brain_slice()
    cam = np.tile(np.linspace(0, 1, 48, dtype=np.float32), (40, 1))
    panel = gc.Panel(
        "p", image / image.max(), cam, brain, None, np.r_[0, -1.0, 0], np.r_[-1.0, 0, 0]
    )
    rgb = gc.panel_rgb(panel, 48)  # 1 mm pixels: no resizing
    row = rgb[20]
    assert _grey(row[cam[20] < gc.HEAT_FLOOR]).all()
    assert not _grey(row[(cam[20] > gc.HEAT_FLOOR + 0.05) & brain[20]]).any()
    grey = panel.grey[20]
    change = np.abs(row - grey[:, None]).sum(-1)
    assert change[40] > change[20]  # more opaque at 0.85 than at 0.43


def test_orientation_letters_from_the_affine():
    # samples' layout: d -> +z (S), h -> -y (P), w -> -x (patient left)
    a = gc.SAMPLES_AFFINE
    axial = gc.orientation_letters(a[:3, 1], a[:3, 2])
    assert axial == {"top": "A", "bottom": "P", "left": "R", "right": "L"}  # radiological
    assert gc.orientation_letters(-a[:3, 0], a[:3, 2]) == {
        "top": "S",
        "bottom": "I",
        "left": "R",
        "right": "L",
    }
    assert gc.orientation_letters(-a[:3, 0], a[:3, 1]) == {
        "top": "S",
        "bottom": "I",
        "left": "A",
        "right": "P",
    }
    # an array in neurological order (rows +y, columns +x), slightly oblique
    assert gc.orientation_letters([0.1, 1.0, 0.0], [0.9, 0.0, 0.2]) == {
        "top": "P",
        "bottom": "A",
        "left": "L",
        "right": "R",
    }


def asymmetric_scan(tmp_path):
    """An LPS-stored scan whose patient-left (x < 0) and anterior (y > 0) are brighter.

    Returns (reference file, lesion file, world centre of the lesion): the lesion is at the
    left, anterior, superior.
    """
    shape = (40, 44, 20)
    ras = np.diag([2.0, 2.0, 4.0, 1.0])
    ras[:3, 3] = [-39.0, -43.0, -38.0]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    xyz = ijk @ ras[:3, :3].T + ras[:3, 3]
    brain = ((xyz / [34.0, 38.0, 36.0]) ** 2).sum(-1) < 1
    centre = np.array([-14.0, 16.0, 6.0])
    lesion = (((xyz - centre) / [7.0, 7.0, 9.0]) ** 2).sum(-1) < 1
    data = brain * (100 + 200 * (xyz[..., 0] < 0) + 80 * (xyz[..., 1] > 0))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # stored LPS: x and y reversed
    flip[:2, 3] = np.array(shape[:2]) - 1
    files = []
    for name, a in (("t1c", data), ("mask", lesion)):
        path = tmp_path / f"s_{name}.nii.gz"
        nib.save(nib.Nifti1Image(a[::-1, ::-1].astype(np.float32).copy(), ras @ flip), path)
        files.append(path)
    return files[0], files[1], centre


def test_asymmetric_scan_bright_side_is_where_the_letter_says(tmp_path):
    ref, mask, centre = asymmetric_scan(tmp_path)
    cam_affine = samples_like_affine((10, 16, 16), 6.0)
    cam = np.zeros((10, 16, 16), np.float32)  # no heat: the picture is the underlay alone
    layers = gc.scan_layers(cam, cam_affine, ref, lesion=mask)
    assert layers.image.shape == (20, 44, 40)  # the scan's own resolution, (z, y, x)
    k = 12
    got = gc.overlay_png(
        layers.image[k],
        layers.cam[k],
        tmp_path / "a.png",
        brain=layers.brain[k],
        affine=layers.affine,
    )
    assert got.panels[0].letters == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    panel = _crop(_png(tmp_path / "a.png"), got.boxes[0]).mean(-1)
    rows, cols = panel.shape
    quarter = {  # mean brightness of each quadrant, inset from the letters
        (v, h): panel[
            slice(rows // 8, rows // 2 - 4) if v == "top" else slice(rows // 2 + 4, -rows // 8),
            slice(cols // 8, cols // 2 - 4) if h == "left" else slice(cols // 2 + 4, -cols // 8),
        ].mean()
        for v in ("top", "bottom")
        for h in ("left", "right")
    }
    # patient-left (letter L, right edge) brighter than right; anterior (A, top) than posterior
    assert quarter["top", "right"] > quarter["top", "left"]
    assert quarter["bottom", "right"] > quarter["bottom", "left"]
    assert quarter["top", "right"] > quarter["bottom", "right"]
    assert quarter["top", "left"] > quarter["bottom", "left"]
    # the 3D views cut through the lesion's centre, and it is where the mask put it
    views = gc.overlay_png(
        layers.image,
        layers.cam,
        tmp_path / "v.png",
        brain=layers.brain,
        lesion=layers.lesion,
        affine=layers.affine,
    ).views
    assert views.source == "lesion"
    world = (layers.affine @ [*views.point, 1.0])[:3]
    assert np.linalg.norm(world - centre) < 4.5, world


def samples_like_affine(shape, mm):
    """A (d, h, w) -> RAS affine as samples builds it, centred on the world origin."""
    a = np.zeros((4, 4))
    a[0, 2], a[1, 1], a[2, 0], a[3, 3] = -mm, -mm, mm, 1
    a[:3, 3] = -a[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return a


def test_3d_views_go_through_the_peak_at_the_scans_resolution(tmp_path):
    ref, mask, _ = asymmetric_scan(tmp_path)
    cam_affine = samples_like_affine((10, 16, 16), 6.0)
    dhw = np.stack(np.meshgrid(*[np.arange(n) for n in (10, 16, 16)], indexing="ij"), -1)
    world = dhw @ cam_affine[:3, :3].T + cam_affine[:3, 3]
    peak = np.array([21.0, -9.0, -3.0])  # patient right, posterior, inferior: a model voxel
    cam = np.exp(-(((world - peak) / 9.0) ** 2).sum(-1)).astype(np.float32)
    cam[1, 1:3, 1:3] = 1.0  # hotter, in the scan but outside the brain: must be ignored
    layers = gc.scan_layers(cam, cam_affine, ref)
    spacing = np.sqrt((layers.affine[:3, :3] ** 2).sum(0))  # 4, 2, 2 mm along d, h, w
    views = gc.choose_views(layers.cam, layers.brain, spacing=spacing)
    assert views.source == "peak"
    got = (layers.affine @ [*views.point, 1.0])[:3]
    assert np.linalg.norm(got - peak) < 4.5, got  # within a scan voxel or so
    assert views.point[0] in views.axial and len(views.axial) == 3
    assert np.ptp(views.axial) == 2 * 2  # 8 mm either side at 4 mm slices
    drawing = gc.overlay_png(
        layers.image,
        layers.cam,
        tmp_path / "v.png",
        brain=layers.brain,
        affine=layers.affine,
        title="P1",
    )
    assert drawing.views == views and drawing.size[0] >= 1000
    assert drawing.title == "P1\nslices through the Grad-CAM peak"
    names = [p.name for p in drawing.panels]
    assert [n.split(",")[0] for n in names] == ["axial"] * 3 + ["coronal", "sagittal"]
    assert names[-1].endswith(f"x = {got[0]:.0f} mm")
    # a known peak on a plain array, and the lesion first when there is one
    cam = np.zeros((12, 10, 8), np.float32)
    cam[7, 3, 5] = 1.0
    assert gc.choose_views(cam, spacing=(4, 1, 1)) == gc.Views((7, 3, 5), (5, 7, 9), "peak")
    lesion = np.zeros(cam.shape, bool)
    lesion[2:5, 6:9, 1:4] = True
    assert gc.choose_views(cam, lesion=lesion) == gc.Views((3, 7, 2), (2, 3, 4), "lesion")
    assert gc.choose_views(np.zeros_like(cam), brain=lesion).source == "centre"
    # a peak at the bottom slice: still three slices, moved up; a flat map: its middle
    assert gc.choose_views(np.pad(cam[7:], ((0, 7), (0, 0), (0, 0))), spacing=(4, 1, 1)).axial == (
        0,
        2,
        4,
    )
    assert gc.choose_views(np.ones_like(cam), brain=lesion).point == (3, 7, 2)


def test_underlay_selection(tmp_path):
    assert gc.underlay_modality(["t1", "t2", "t1c"]) == "t1c"
    assert gc.underlay_modality(["t1", "flair"]) == "t1"
    assert gc.underlay_modality(["t1", "t2", "t1c"], "t2") == "t2"
    with pytest.raises(ValueError, match=r"underlay 'adc' is not among .*'t1', 't2'"):
        gc.underlay_modality(["t1", "t2"], "adc")
    # predict's flag: the run's modalities, a refusal naming the subject and the flag
    run = types.SimpleNamespace(modalities=["t1", "t2", "t1c"])
    assert inference.cam_underlay(run, "P1") == "t1c"
    with pytest.raises(InputError, match=r"subject P1.*--gradcam_underlay: .*'adc'"):
        inference.cam_underlay(run, "P1", "adc")
    # scan_layers draws the underlay given, on the reference's grid (here its negative)
    ref, _, _ = asymmetric_scan(tmp_path)
    img = nib.load(ref)
    other = tmp_path / "t2.nii.gz"
    nib.save(nib.Nifti1Image(500 - np.asarray(img.dataobj), img.affine), other)
    cam = np.zeros((10, 16, 16), np.float32)
    affine = samples_like_affine(cam.shape, 6.0)
    a, b = gc.scan_layers(cam, affine, ref), gc.scan_layers(cam, affine, ref, underlay=other)
    np.testing.assert_allclose(b.image, 500 - a.image)
    np.testing.assert_array_equal(a.brain, b.brain)  # the brain stays the reference's
    # overlay_png's channel keyword picks the grey channel: textured 0, flat 1
    image, brain, _ = brain_slice()
    two = np.stack([image, brain * 0.9], -1)
    spread = []
    for channel in (0, 1):
        got = gc.overlay_png(
            two, np.zeros_like(image), tmp_path / f"{channel}.png", channel=channel
        )
        spread.append(got.panels[0].grey[got.panels[0].brain].std())
    assert spread[0] > 0.05 and spread[1] < 1e-6


def test_overlay_png_shapes_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    assert (
        gc.overlay_png(rng.random((24, 20, 3)), rng.random((24, 20)), tmp_path / "s.png").views
        is None
    )
    vol = np.zeros((16, 12, 12, 2), np.float32)
    vol[3:13, 2:10, 2:10] = rng.random((10, 8, 8, 2))
    cam3 = np.zeros((16, 12, 12), np.float32)
    cam3[6:9, 4:8, 4:8] = 0.8
    got = gc.overlay_png(vol, cam3, tmp_path / "vol" / "v.png")  # samples' layout by default
    assert got.views.source == "peak" and len(got.panels) == 5
    assert (tmp_path / "vol" / "v.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="do not match"):
        gc.overlay_png(vol, cam3[:, :5], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="lesion .* does not match"):
        gc.overlay_png(vol, cam3, tmp_path / "bad.png", lesion=np.zeros((3, 3, 3), bool))


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
