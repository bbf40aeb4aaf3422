"""How much of the label a whole-brain volume holds without a mask: which channels to give a 3D net.

    python -m benchmarks.brain_histograms [--phantom_seeds=3,4,5] [--subjects=60]
        [--workdir=/tmp/ernjax_histograms] [--out=benchmarks/results]

On the tuning cohorts of the embedded generator (phantom seeds 3-5 by default: never a benchmark
cohort), each subject's whole-brain volume is loaded as `configs/resnet3d.py` gives it to the
network (the same grid, crop and min-max normalization; no mask read), and summarized per channel
by a 16-bin intensity histogram and five upper percentiles inside the brain: no location, no
lesion outline, only how much of the brain is how bright. A logistic regression (penalty chosen by
inner 5-fold CV) on those numbers, scored by 5-fold cross-validated subject AUC, says how much a
mask-free model could read from each channel set. Written to OUT/brain_histograms.{md,json}.
"""

import json
from pathlib import Path

import numpy as np
from absl import flags
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks import common
from ernjax import atomic, cli
from ernjax.data import cohort, prepare, samples
from ernjax.data.spec import SampleSpec

FLAGS = flags.FLAGS
CHANNEL_SETS = {
    "t1, t1c, t2 (Ying 2025)": ("t1", "t1c", "t2"),
    "t1, t1c, t2, flair": ("t1", "t1c", "t2", "flair"),
    "flair alone": ("flair",),
}
PERCENTILES = (50, 90, 95, 99, 99.5)


def histogram_features(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """[C * 21]: per channel a 16-bin histogram (fractions of the brain) and PERCENTILES."""
    out = []
    for c in range(volume.shape[-1]):
        x = volume[..., c][brain]
        counts, _ = np.histogram(x, bins=16, range=(0.0, 1.0))
        out += [*(counts / max(x.size, 1)), *np.percentile(x, PERCENTILES)]
    return np.asarray(out, np.float64)


def cohort_features(config, workdir: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({channel set: [S, F] features}, [S] labels) of the config's cohort, no mask read."""
    d = config.data
    d.channels = tuple(dict.fromkeys(m for chans in CHANNEL_SETS.values() for m in chans))
    spec = SampleSpec.from_config(d)
    found = cohort.find_subjects(
        prepare.cohort_dir(config, workdir), dict(spec.modalities), classes=d.classes
    )
    rows, labels = [], []
    for subject in found.subjects:
        vol = samples.load_subject(subject, spec)
        rows.append(
            [histogram_features(vol.image[..., [i]], vol.brain) for i in range(len(d.channels))]
        )
        labels.append(subject.label)
    index = {m: i for i, m in enumerate(d.channels)}
    feats = {
        name: np.stack([np.concatenate([r[index[m]] for m in chans]) for r in rows])
        for name, chans in CHANNEL_SETS.items()
    }
    return feats, np.asarray(labels)


def cv_auc(x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """5-fold cross-validated AUC of a penalized logistic regression on `x`."""
    model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=5, max_iter=5000))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    p = cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


def report(rows: list[dict], machine: dict) -> str:
    """The Markdown table: CV subject AUC per channel set and cohort."""
    seeds = [r["phantom_seed"] for r in rows]
    lines = [
        "# What a whole-brain volume holds without a mask",
        "",
        f"{machine['cpu']} ({machine['cores']} cores), {machine['date']}. Tuning cohorts "
        f"(phantom seeds {seeds}, {rows[0]['subjects']} subjects each; no benchmark cohort). "
        "5-fold cross-validated subject AUC of a logistic regression on per-channel whole-brain "
        "intensity histograms (16 bins + percentiles 50-99.5), on the grid `configs/resnet3d.py` "
        "feeds the network (no mask read).",
        "",
        "| channels | " + " | ".join(f"phantom {s}" for s in seeds) + " | mean |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for name in CHANNEL_SETS:
        aucs = [r["cv_auc"][name] for r in rows]
        cells = " | ".join(f"{a:.3f}" for a in aucs)
        lines.append(f"| {name} | {cells} | {np.mean(aucs):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    from configs import resnet3d

    rows = []
    for p in [int(s) for s in FLAGS.phantom_seeds]:
        config = resnet3d.get_config()
        config.data.synthetic.seed, config.data.synthetic.subjects = p, FLAGS.subjects
        feats, y = cohort_features(config, Path(FLAGS.workdir) / f"phantom{p}")
        aucs = {name: cv_auc(x, y) for name, x in feats.items()}
        rows.append({"phantom_seed": p, "subjects": len(y), "cv_auc": aucs})
    machine = common.machine()
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"machine": machine, "rows": rows}, indent=1)
    atomic.write_text(out / "brain_histograms.json", payload)
    atomic.write_text(out / "brain_histograms.md", report(rows, machine))
    print(report(rows, machine))


if __name__ == "__main__":
    flags.DEFINE_list("phantom_seeds", ["3", "4", "5"], "tuning cohorts of the generator")
    flags.DEFINE_integer("subjects", 60, "subjects per cohort")
    flags.DEFINE_string("workdir", "/tmp/ernjax_histograms", "where the cohorts are written")
    flags.DEFINE_string("out", "benchmarks/results", "where the report goes")
    cli.run(main)
