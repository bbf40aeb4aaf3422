"""The synthetic cohort: MRI-like phantoms of glioma recurrence and radiation necrosis.

Written to disk in exactly the layout of a real cohort, so the embedded default runs the same code
path as a user's data:

    DIR/labels.csv                      subject_id,label,lesion_slices
    DIR/cohort.json                     the parameters that made it (reused when they match)
    DIR/<id>/<id>_{t1,t1c,t2,flair,mask}.nii.gz

Anatomy is the MNI152 template and its tissue maps that nilearn ships inside its package (no
download). Each subject gets a random smooth deformation, its own scanner (gain, tissue contrast,
noise level, bias field) and one lesion in the white matter, drawn as the papers describe the two
classes (Ying 2025, Discussion): recurrence = irregular, heterogeneous enhancement on T1c with
infiltrative T2/FLAIR edema; necrosis = smooth ring enhancement around a non-enhancing core with
focal edema. `difficulty` pulls the two classes' lesion parameters towards each other.

    python -m ernjax.data.synthetic --out DIR --subjects 60 --seed 0
"""

import argparse
import csv
import functools
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from ernjax import atomic
from ernjax.data.geometry import Image, resample, save_image, spacing_grid
from ernjax.errors import InputError, one_line_errors
from ernjax.progress import Meter

GENERATOR_VERSION = 1  # bump when the images change, so cached cohorts are rewritten
MODALITIES = ("t1", "t1c", "t2", "flair")
CLASSES = ("necrosis", "recurrence")

# Normal tissue signal (csf, gm, wm), white matter = 1, typical clinical sequences: T1 WM > GM >
# CSF; T2 CSF > GM > WM; FLAIR CSF dark, GM > WM. T1 and T1c start from the template's own T1
# intensities (real anatomical detail); their row only scales the per-subject contrast jitter.
_TISSUE = {
    "t1": (0.32, 0.75, 1.0),
    "t1c": (0.34, 0.78, 1.0),
    "t2": (2.6, 1.35, 1.0),
    "flair": (0.25, 1.25, 1.0),
}
# Lesion compartments (enhancing tissue, non-enhancing core, edema), white matter = 1; T1c adds
# the contrast uptake of the enhancing part on top of its first value.
_LESION = {
    "t1": (0.75, 0.45, 0.82),
    "t1c": (0.80, 0.45, 0.82),
    "t2": (1.5, 2.3, 1.8),
    "flair": (1.4, 1.0, 1.9),
}
# Lesion parameters: (recurrence prototype, necrosis prototype), after Ying 2025 (Discussion):
# "irregular enhancement with perilesional edema is characteristic of recurrence, whereas
# necrosis often exhibits uniform ring enhancement"; "infiltrative edema is indicative of
# recurrence, while focal edema is more typical of necrosis".
_PROTOTYPES = {
    "outline_irregularity": (0.40, 0.06),  # relative radius variation of the enhancing outline
    "core_fraction": (0.30, 0.62),  # radius of the non-enhancing core / lesion radius
    "core_irregularity": (0.70, 0.06),  # patchy (recurrence) vs round (necrosis) core
    "enhancement_heterogeneity": (0.55, 0.06),
    "edema_mm": (16.0, 4.0),  # edema reach beyond the lesion
    "edema_irregularity": (0.50, 0.10),
}
# Scanner families of Gao 2020, Table 2 (five systems, 1.5 T and 3 T): stored intensity of white
# matter and relative noise level. The numbers are plausible orders, not measured values.
_SCANNERS = ((600.0, 0.02), (700.0, 0.02), (1800.0, 0.025), (1500.0, 0.025), (1100.0, 0.04))
_TEMPLATE_WM_T1 = 0.87  # mean template T1 where P(wm) > 0.9 (measured on nilearn 0.14)


@functools.lru_cache(maxsize=4)
def _template(spacing: float) -> dict:
    """MNI152 T1, tissue maps, brain mask and depth on a `spacing` mm grid (cached)."""
    from nilearn import datasets  # the 2 mm files ship inside nilearn: nothing is downloaded

    loaders = {
        "t1": datasets.load_mni152_template,
        "gm": datasets.load_mni152_gm_template,
        "wm": datasets.load_mni152_wm_template,
        "mask": datasets.load_mni152_brain_mask,
    }
    imgs = {k: f(resolution=2) for k, f in loaders.items()}
    affine = imgs["t1"].affine
    maps = {k: np.asarray(v.dataobj, dtype=np.float32) for k, v in imgs.items()}
    maps = {k: np.clip(v, 0.0, None) for k, v in maps.items()}
    if spacing != 2.0:
        shape, new_affine = spacing_grid(Image(maps["t1"], affine), (spacing,) * 3)
        maps = {k: resample(Image(v, affine), shape, new_affine).data for k, v in maps.items()}
        affine = new_affine
    brain = maps["mask"] > 0.5
    maps["depth"] = ndimage.distance_transform_edt(brain).astype(np.float32) * spacing
    reach = ndimage.binary_dilation(brain, iterations=2)
    return dict(maps=maps, reach=reach, affine=affine, shape=brain.shape)


def _cosine_basis(n: int, order: int) -> np.ndarray:
    """(n, order) low-frequency DCT-II basis along one axis, for smooth separable fields."""
    i = (np.arange(n) + 0.5) / n
    return np.stack([np.cos(np.pi * a * i) for a in range(1, order + 1)], 1).astype(np.float32)


def _smooth_field(rng, shape, amplitude: float, order: int = 3) -> np.ndarray:
    """A smooth random field over the whole grid with about `amplitude` standard deviation."""
    coef = rng.normal(0.0, amplitude / order**1.5, (order,) * 3).astype(np.float32)
    bx, by, bz = (_cosine_basis(n, order) for n in shape)
    return np.einsum("abc,ia,jb,kc->ijk", coef, bx, by, bz, optimize=True)


def _noise_field(rng, points, wavelength: float, modes: int = 8) -> np.ndarray:
    """A smooth isotropic random field (unit variance) at mm coordinates `points` (x, y, z)."""
    x, y, z = points
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), np.float32)
    for _ in range(modes):
        w = rng.normal(size=3)
        w *= 2 * np.pi / wavelength / np.linalg.norm(w) * rng.uniform(0.7, 1.4)
        phase = w[0] * x + w[1] * y + w[2] * z
        out += np.cos(phase + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    return out * np.float32(np.sqrt(2.0 / modes))


def _deform(rng, tmpl: dict, spacing: float) -> dict:
    """Warps the template maps by a small random affine plus a smooth displacement.

    Only voxels that land inside the (dilated) template brain are interpolated, which keeps a
    subject well under a second on one core.
    """
    shape = tmpl["shape"]
    angles = np.deg2rad(rng.normal(0.0, 3.0, 3))
    rot = _rotation(angles)
    scale = np.diag(rng.uniform(0.92, 1.08, 3))
    shear = np.eye(3) + rng.normal(0.0, 0.02, (3, 3)) * (1 - np.eye(3))
    a = rot @ scale @ shear
    shift = rng.normal(0.0, 3.0, 3)  # mm
    centre = (np.array(shape) - 1) / 2.0
    g = [(np.arange(n, dtype=np.float32) - c) * spacing for n, c in zip(shape, centre, strict=True)]
    grid = (g[0][:, None, None], g[1][None, :, None], g[2][None, None, :])
    src = []
    for c in range(3):  # output voxel (mm from centre) -> template voxel index
        mm = a[c, 0] * grid[0] + a[c, 1] * grid[1] + a[c, 2] * grid[2] + shift[c]
        mm = mm + _smooth_field(rng, shape, 2.0)  # about 2 mm of smooth non-linear warp
        src.append((mm / spacing + centre[c]).astype(np.float32))
    near = [np.clip(np.rint(s), 0, n - 1).astype(np.intp) for s, n in zip(src, shape, strict=True)]
    inside = tmpl["reach"][near[0], near[1], near[2]]
    points = np.stack([s[inside] for s in src])
    out = {}
    for k, v in tmpl["maps"].items():
        vol = np.zeros(shape, np.float32)
        vol[inside] = ndimage.map_coordinates(v, points, order=1, mode="constant", prefilter=False)
        out[k] = vol
    out["brain"] = out.pop("mask") > 0.5
    out["csf"] = np.clip(out["brain"] - out["gm"] - out["wm"], 0.0, 1.0)
    return out


def _rotation(angles) -> np.ndarray:
    """Rotation matrix from three Euler angles (radians)."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _phenotype(rng, label: str, difficulty: float) -> dict:
    """Lesion parameters: the class prototype, blurred towards the other class by `difficulty`.

    A subject's position s on the recurrence (0) .. necrosis (1) axis is the class value plus
    Gaussian spread sigma = 0.4 d / (1 - d): d = 0 gives pure prototypes, d = 0.5 classes that
    overlap (about 89% Bayes accuracy on s alone), d -> 1 indistinguishable classes. Each feature
    then jitters around s on its own, so no single feature carries the whole label.
    """
    d = float(np.clip(difficulty, 0.0, 0.999))
    sigma = 0.4 * d / (1.0 - d)
    s = (1.0 if label == "necrosis" else 0.0) + sigma * rng.normal()
    params = {}
    for name, (rec, nec) in _PROTOTYPES.items():
        t = float(np.clip(s + 0.15 * d * rng.normal(), 0.0, 1.0))
        params[name] = rec + t * (nec - rec)
    params["radius_mm"] = rng.uniform(8.0, 16.0)  # size is a nuisance, not a class feature
    params["enhancement"] = rng.uniform(0.8, 1.3)  # T1c uptake over the pre-contrast signal
    params["edema_strength"] = rng.uniform(0.75, 1.0)
    return params


def _pick_centre(rng, tissue: dict, radius: float) -> np.ndarray:
    """A random voxel deep in the white matter, far enough from the brain surface."""
    ok = (tissue["wm"] > 0.85) & (tissue["depth"] > radius + 10.0)
    if not ok.any():  # tiny or coarse grids: take the deepest white matter
        score = tissue["wm"] * tissue["depth"]
        ok = score >= np.percentile(score[tissue["brain"]], 99)
    idx = np.flatnonzero(ok)
    return np.array(np.unravel_index(idx[rng.integers(idx.size)], ok.shape))


def _ramp(x) -> np.ndarray:
    """Soft indicator: 0 below -0.5, 1 above 0.5, linear between (one-voxel partial volume)."""
    return np.clip(x + 0.5, 0.0, 1.0)


def _lesion_compartments(rng, p: dict, axes, tissue_box: dict, spacing: float) -> dict:
    """Fractions of enhancing tissue, core and edema (and the enhancement map) on a box."""
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    r = np.sqrt(x**2 + y**2 + z**2)
    unit = [c / np.maximum(r, 1e-3) for c in (x, y, z)]  # direction from the centre
    radius = p["radius_mm"]

    def outline(rad, irregularity, lobes, soft):
        # Star-shaped: the radius varies smoothly with direction only, so the outline is
        # lobulated ("irregular") but never breaks into islands. `lobes` ~ bumps per turn.
        bumps = _noise_field(rng, [u * lobes for u in unit], 2 * np.pi)
        return _ramp((rad * np.clip(1.0 + irregularity * bumps, 0.3, None) - r) / soft)

    brain = tissue_box["brain"]
    lesion = outline(radius, p["outline_irregularity"], 3.0, spacing) * brain
    core = outline(radius * p["core_fraction"], p["core_irregularity"], 3.0, spacing) * lesion
    texture = p["enhancement_heterogeneity"] * _noise_field(rng, (x, y, z), 0.6 * radius)
    reach = radius + p["edema_mm"]
    # Vasogenic edema spreads along white matter and spares cortex and CSF.
    spread = np.clip(tissue_box["wm"] + 0.3 * tissue_box["gm"], 0.0, 1.0)
    edema = outline(reach, p["edema_irregularity"], 3.0, 2.0 * spacing) * spread * brain
    edema = np.clip(edema * p["edema_strength"], 0.0, 1.0 - lesion)
    return dict(enhancing=lesion - core, core=core, edema=edema, texture=texture)


def _add_lesion(rng, vols: dict, tissue: dict, p: dict, spacing: float) -> np.ndarray:
    """Paints the lesion into the WM-normalized `vols` in place; returns its mask (uint8)."""
    centre = _pick_centre(rng, tissue, p["radius_mm"])
    half = p["radius_mm"] * 1.5 + p["edema_mm"] * 1.6 + 4.0
    shape = tissue["brain"].shape
    n = int(np.ceil(half / spacing))
    box = tuple(slice(max(0, c - n), min(s, c + n + 1)) for c, s in zip(centre, shape, strict=True))
    axes = [(np.arange(b.start, b.stop) - c) * spacing for b, c in zip(box, centre, strict=True)]
    tissue_box = {k: tissue[k][box] for k in ("gm", "wm", "brain")}
    f = _lesion_compartments(rng, p, axes, tissue_box, spacing)
    normal = 1.0 - f["enhancing"] - f["core"] - f["edema"]
    for m, (enh, core, edema) in _LESION.items():
        if m == "t1c":  # contrast uptake, heterogeneous in recurrence (Ying 2025)
            enh_signal = enh + p["enhancement"] * np.clip(1.0 + f["texture"], 0.0, None)
        else:  # the same tissue texture, fainter, on the other sequences
            enh_signal = enh * np.clip(1.0 + 0.3 * f["texture"], 0.0, None)
        v = vols[m][box]
        vols[m][box] = (
            v * normal + f["enhancing"] * enh_signal + f["core"] * core + f["edema"] * edema
        )
    mask = np.zeros(shape, np.uint8)
    mask[box] = (f["enhancing"] + f["core"]) >= 0.5
    if not mask.any():  # a lesion thinner than a voxel still marks its centre
        mask[tuple(centre)] = 1
    return mask


def _contrasts(rng, tissue: dict) -> dict:
    """Normal-brain T1, T1c, T2 and FLAIR in white-matter units, with per-subject contrast."""
    parts = (tissue["csf"], tissue["gm"], tissue["wm"])
    t1 = tissue["t1"] / _TEMPLATE_WM_T1
    vols = {}
    for m, levels in _TISSUE.items():
        jitter = rng.normal(0.0, 0.05, 3)  # sequence parameters differ between sites
        if m in ("t1", "t1c"):
            vol = t1 * (1.0 + jitter[2]) + sum(
                p * (lv * (j - jitter[2])) for p, lv, j in zip(parts, levels, jitter, strict=True)
            )
        else:
            vol = sum(p * (lv * (1 + j)) for p, lv, j in zip(parts, levels, jitter, strict=True))
        vols[m] = vol.astype(np.float32)
    return vols


def _thick_slices(vols: dict, affine: np.ndarray, thickness: float) -> tuple[dict, np.ndarray]:
    """Resamples the third (axial) axis to `thickness` mm slices with slab partial volume."""
    shape, new_affine = spacing_grid(Image(vols["brain"], affine), (0.0, 0.0, thickness))
    spacing = float(np.linalg.norm(affine[:3, 2]))
    to_old = np.linalg.inv(affine) @ new_affine  # new voxel -> old voxel; z is only scaled
    z = to_old[2, 2] * np.arange(shape[2]) + to_old[2, 3]
    z0 = np.clip(np.floor(z).astype(int), 0, vols["brain"].shape[2] - 1)
    z1 = np.clip(z0 + 1, 0, vols["brain"].shape[2] - 1)
    w = np.clip(z - z0, 0.0, 1.0).astype(np.float32)
    out = {}
    for k, v in vols.items():
        v = v.astype(np.float32)
        slab = ndimage.uniform_filter1d(v, max(1, round(thickness / spacing)), axis=2)
        out[k] = slab[..., z0] * (1 - w) + slab[..., z1] * w
    return out, new_affine


def make_subject(
    seed: int,
    index: int,
    label: str,
    *,
    difficulty: float = 0.5,
    slice_thickness: float = 0.0,
    spacing: float = 2.0,
) -> tuple[dict, np.ndarray]:
    """Draws one subject's four modalities and lesion mask.

    Args:
      seed: cohort seed.
      index: subject number; (seed, index) alone fixes the random stream, so subject k is the
        same whatever the cohort size.
      label: "necrosis" or "recurrence".
      difficulty: 0 (prototype lesions) .. 1 (classes indistinguishable).
      slice_thickness: 0 keeps isotropic voxels; > 0 stores axial slices that thick (Gao 2020,
        Table 2: 5-6.5 mm).
      spacing: in-plane (and isotropic) voxel size in mm; 2 is the nilearn MNI152 grid.

    Returns:
      (arrays, affine): arrays maps "t1", "t1c", "t2", "flair" (int16, 0 outside the brain) and
      "mask" (uint8) to 3D arrays on the RAS+ grid given by the 4x4 affine.
    """
    if label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    rng = np.random.default_rng([int(seed), int(index)])
    tmpl = _template(float(spacing))
    tissue = _deform(rng, tmpl, spacing)
    vols = _contrasts(rng, tissue)
    p = _phenotype(rng, label, difficulty)
    vols["mask"] = _add_lesion(rng, vols, tissue, p, spacing)
    vols["brain"] = tissue["brain"].astype(np.float32)
    affine = tmpl["affine"]
    if slice_thickness > 0:
        vols, affine = _thick_slices(vols, affine, slice_thickness)
    return _acquire(rng, vols), affine


def _acquire(rng, vols: dict) -> dict:
    """Scanner gain, bias field and Rician noise; skull-stripped int16 like a BraTS volume."""
    brain = vols["brain"] >= 0.5
    mask = (vols["mask"] >= 0.5) & brain
    if not mask.any():  # thick slabs can average a small lesion below one half
        mask.flat[np.argmax(vols["mask"] * brain)] = True
    gain, noise = _SCANNERS[rng.integers(len(_SCANNERS))]
    out = {}
    for m in MODALITIES:
        g = gain * rng.uniform(0.8, 1.25)
        bias = np.exp(_smooth_field(rng, brain.shape, 0.12)[brain])  # about +-12% shading
        signal = vols[m][brain] * bias * g
        sigma = noise * g * rng.uniform(0.8, 1.25)
        n1, n2 = (rng.standard_normal(signal.size, dtype=np.float32) * sigma for _ in range(2))
        vol = np.zeros(brain.shape, np.int16)
        vol[brain] = np.clip(np.rint(np.sqrt((signal + n1) ** 2 + n2**2)), 0, 32767)
        out[m] = vol
    out["mask"] = mask.astype(np.uint8)
    return out


def lesion_slices(mask: np.ndarray) -> list[int]:
    """Stored third-axis indices of the slices that contain lesion voxels."""
    return [int(k) for k in np.flatnonzero(mask.reshape(-1, mask.shape[2]).any(axis=0))]


def _labels(subjects: int, seed: int, recurrence_fraction: float) -> list[str]:
    """Exactly round(N * fraction) recurrences, in a seeded random order."""
    n_rec = int(round(subjects * recurrence_fraction))
    labels = np.array(["recurrence"] * n_rec + ["necrosis"] * (subjects - n_rec))
    return [str(x) for x in np.random.default_rng([int(seed), 2**31]).permutation(labels)]


def _check(subjects, difficulty, recurrence_fraction, slice_thickness, spacing) -> None:
    if subjects < 1:
        raise ValueError(f"subjects must be >= 1, got {subjects}")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    if not 0.0 <= recurrence_fraction <= 1.0:
        raise ValueError(f"recurrence_fraction must be in [0, 1], got {recurrence_fraction}")
    if spacing < 2.0:
        raise ValueError(f"spacing must be >= 2 mm (the MNI152 grid nilearn ships), got {spacing}")
    if slice_thickness and slice_thickness < spacing:
        raise ValueError(f"slice_thickness must be 0 or >= spacing, got {slice_thickness}")


def write_cohort(
    out_dir,
    *,
    subjects: int = 60,
    seed: int = 0,
    difficulty: float = 0.5,
    recurrence_fraction: float = 0.66,
    slice_thickness: float = 0.0,
    spacing: float = 2.0,
) -> Path:
    """Writes a synthetic cohort to `out_dir`, atomically, or reuses a matching one.

    Args:
      out_dir: the cohort folder. If it holds a cohort.json with the same parameters it is
        returned untouched; a synthetic cohort with other parameters is replaced; any other
        non-empty folder is an error.
      subjects: number of subjects.
      seed: random seed; the same seed gives identical arrays.
      difficulty: class overlap, 0 (trivial) .. 1 (chance).
      recurrence_fraction: share of "recurrence" labels (Gao 2020: 96 of 146, about 0.66).
      slice_thickness: 0 for isotropic voxels, else the stored axial slice thickness in mm.
      spacing: isotropic voxel size in mm before thick slicing (>= 2).

    Returns:
      The cohort folder.
    """
    _check(subjects, difficulty, recurrence_fraction, slice_thickness, spacing)
    out = Path(out_dir)
    params = dict(
        generator="ernjax.data.synthetic",
        version=GENERATOR_VERSION,
        subjects=int(subjects),
        seed=int(seed),
        difficulty=float(difficulty),
        recurrence_fraction=float(recurrence_fraction),
        slice_thickness=float(slice_thickness),
        spacing=float(spacing),
    )
    if _matches(out, params):
        return out
    if out.exists() and any(out.iterdir()) and not (out / "cohort.json").exists():
        raise FileExistsError(f"{out} exists and is not a synthetic cohort; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    logging.info("synthetic cohort: writing %d subjects to %s", subjects, out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_subjects(tmp, params)
        atomic.write_text(tmp / "cohort.json", json.dumps(params, indent=1) + "\n")
        _swap_in(tmp, out, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _matches(out: Path, params: dict) -> bool:
    try:
        return json.loads((out / "cohort.json").read_text()) == params
    except (OSError, ValueError):
        return False


def _write_subjects(tmp: Path, params: dict) -> None:
    """Writes every subject's NIfTI files and labels.csv into `tmp`."""
    width = max(4, len(str(params["subjects"])))
    labels = _labels(params["subjects"], params["seed"], params["recurrence_fraction"])
    rows = []
    with Meter("synthetic cohort", len(labels), unit="subject") as meter:
        for i, label in enumerate(labels, start=1):
            sid = f"syn-{i:0{width}d}"
            kw = {k: params[k] for k in ("difficulty", "slice_thickness", "spacing")}
            arrays, affine = make_subject(params["seed"], i, label, **kw)
            for name, data in arrays.items():
                save_image(Image(data, affine), tmp / sid / f"{sid}_{name}.nii.gz")
            rows.append((sid, label, ";".join(map(str, lesion_slices(arrays["mask"])))))
            meter.update()
    with atomic.atomic_path(tmp / "labels.csv") as path, open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("subject_id", "label", "lesion_slices"))
        w.writerows(rows)


def _swap_in(tmp: Path, out: Path, params: dict) -> None:
    """Renames the finished `tmp` to `out`; an older synthetic cohort there is replaced."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if _matches(out, params):  # a concurrent writer finished the same cohort first
            return
        if old is not None and not out.exists():
            old.rename(out)  # put the previous cohort back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(argv=None) -> None:
    """Command line: python -m ernjax.data.synthetic --out DIR --subjects N --seed S."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="cohort folder to write")
    ap.add_argument("--subjects", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--difficulty", type=float, default=0.5, help="0 trivial .. 1 chance")
    ap.add_argument("--recurrence_fraction", type=float, default=0.66)
    ap.add_argument("--slice_thickness", type=float, default=0.0, help="mm; 0 = isotropic")
    ap.add_argument("--spacing", type=float, default=2.0, help="isotropic voxel size in mm")
    ap.add_argument(  # read by errors.one_line_errors
        "--verbose_errors", action="store_true", help="show the traceback of bad input errors"
    )
    args = vars(ap.parse_args(argv))
    args.pop("verbose_errors")
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the progress lines
    out = args.pop("out")
    try:
        _check(**{k: v for k, v in args.items() if k != "seed"})
    except ValueError as e:  # a value out of range: the user's to fix, said in one line
        raise InputError("", "", str(e)) from None
    try:
        path = write_cohort(out, **args)
    except FileExistsError as e:  # --out is a folder of other files
        raise InputError("", "", str(e)) from None
    print(f"synthetic cohort: {path}")


if __name__ == "__main__":
    one_line_errors(main)()
