"""Writes `dummy_data/`: a 10-subject cohort of tiny volumes for the builder's declarative test.

Run `python -m data_builders.ernjax_mri.make_dummy_data` to regenerate (deterministic). Each
subject has T1, T1c, T2, FLAIR and a lesion mask on a 20 x 24 x 10 grid (2 x 2 x 4 mm): an
ellipsoidal "brain" with a spherical lesion, enhancing as a ring (necrosis) or solid
(recurrence). Real-looking cohorts come from `ernjax.data.synthetic`; this one only has to be small.
"""

from pathlib import Path

import numpy as np

from ernjax.data.geometry import Image, save_image

OUT = Path(__file__).parent / "dummy_data"
SHAPE = (20, 24, 10)
AFFINE = np.diag([2.0, 2.0, 4.0, 1.0])


def _subject(rng: np.random.Generator, recurrence: bool) -> dict[str, np.ndarray]:
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    brain = ((x - 9.5) / 8) ** 2 + ((y - 11.5) / 10) ** 2 + ((z - 4.5) / 4.5) ** 2 <= 1
    c = rng.uniform([6, 8, 3], [13, 15, 6])
    r = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + ((z - c[2]) * 2) ** 2)
    lesion = (r <= 3.5) & brain
    ring = lesion & (r >= 2.0)
    enh = lesion if recurrence else ring
    noise = lambda: rng.normal(0, 5, SHAPE)  # noqa: E731
    t1 = np.where(brain, 100 + noise(), 0)
    t1c = np.where(brain, 100 + 80 * enh + noise(), 0)
    t2 = np.where(brain, 80 + 60 * lesion + noise(), 0)
    flair = np.where(brain, 90 + 50 * lesion + noise(), 0)
    return {"t1": t1, "t1c": t1c, "t2": t2, "flair": flair, "mask": lesion}


def main() -> None:
    """Writes the cohort (labels.csv + one folder per subject)."""
    rng = np.random.default_rng(0)
    rows = ["subject_id,label"]
    for i in range(10):
        sid, rec = f"dummy-{i:02d}", i % 3 != 0  # 7 recurrence : 3 necrosis, like Gao's 66:34
        rows.append(f"{sid},{'recurrence' if rec else 'necrosis'}")
        for name, arr in _subject(rng, rec).items():
            dtype = np.uint8 if name == "mask" else np.int16
            save_image(
                Image(np.asarray(arr).astype(dtype), AFFINE), OUT / sid / f"{sid}_{name}.nii.gz"
            )
    (OUT / "labels.csv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
