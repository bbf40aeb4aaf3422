"""Does each network learn what the data holds? The README's learning rows (issue 16).

    python -m benchmarks.learning [--setups=2d_mask,3d_mask,3d_brain] [--phantom_seeds=0,1,2]
        [--seeds=0,1,2] [--workdir=/tmp/ernjax_learning] [--out=benchmarks/results]

For each setup and each cohort of the embedded generator (`--phantom_seeds`, the default split,
the mask on disk), `ernjax.repeat` trains the setup's default config once per training seed,
and the radiomics baseline once, on the same patients (W/<setup>/phantom_<p>/repeat.md holds
every run with its CIs). The setups are the configs as shipped, with only the input changed:
  - 2d_mask: configs/ern.py with `data.roi="mask"`;
  - 3d_mask: configs/resnet3d.py with `data.roi="mask"` (and the mask pattern);
  - 3d_brain: configs/resnet3d.py as it is: whole brain, no mask read (Ying 2025's setting);
    its radiomics row is the 3d_mask one (the same split), as a reference it cannot use.
Subject level first: besides each cohort's mean over seeds, the test subjects of all cohorts
are pooled (different patients, so independent), each subject's probability averaged over the
training seeds, and that pooled AUC gets a DeLong CI and a DeLong test against radiomics on the
same subjects. Written to OUT/learning.{json,md}, stamped with the machine, and each cohort's
repeat.md (every run with its CIs) to OUT/learning/<setup>_phantom_<p>.md.
"""

import importlib
import json
from pathlib import Path

import numpy as np
from absl import flags, logging

from benchmarks import common
from ernjax import atomic, cli
from ernjax.baselines import radiomics
from ernjax.evaluate import predictions, stats
from ernjax.evaluate.predictions import Predictions
from ernjax.evaluate.scoring import ScoringPolicy
from ernjax.studies import crossval, repeat

FLAGS = flags.FLAGS

MASK = {"roi": "mask", "mask_pattern": "*_mask.nii.gz"}
SETUPS = {
    "2d_mask": ("configs.ern", MASK),
    "3d_mask": ("configs.resnet3d", MASK),
    "3d_brain": ("configs.resnet3d", {}),
}


def setup_config(setup: str, phantom: int, tiny: bool = False):
    """The setup's shipped config on the cohort of generator seed `phantom`."""
    module, data = SETUPS[setup]
    c = importlib.import_module(module).get_config("tiny" if tiny else None)
    c.data.update(data)
    c.data.synthetic.seed = phantom
    return c


def test_predictions(workdir: Path, phantom: int) -> Predictions:
    """A run's test predictions, subject IDs prefixed by the cohort (IDs repeat across them)."""
    p = predictions.read_csv(workdir / "predictions_test.csv")
    return Predictions([f"p{phantom}/{s}" for s in p.subject_id], p.label, p.probs, p.class_names)


def run_setup(setup: str, phantoms, seeds, root: Path, tiny: bool = False) -> dict:
    """Repeats the setup on every cohort; returns its per-cohort and pooled figures."""
    out = {"cohorts": {}, "pooled": {}}
    network, baseline = [], []
    mask_setup = setup.replace("brain", "mask")
    for p in phantoms:
        config = setup_config(setup, p, tiny)
        work = root / setup / f"phantom_{p}"
        flat = repeat.run(config, work, seeds, with_radiomics=bool(SETUPS[setup][1]))
        out["cohorts"][str(p)] = {
            "network_mean_subject_auc": flat["mean.test.subject.auc"],
            "network_sd_subject_auc": flat["sd.test.subject.auc"],
            "network_subject_auc": [flat[f"seed_{s}.test.subject.auc"] for s in seeds],
            "network_image_auc_mean": flat["mean.test.image.auc"],
        }
        members = [test_predictions(work / f"seed_{s}", p) for s in seeds]
        positive = ScoringPolicy.from_config(config.eval, members[0].class_names).positive
        network.append(crossval.ensemble_predictions(members, positive, "mean"))
        base_dir = root / mask_setup / f"phantom_{p}" / radiomics.MODEL_NAME
        if (base_dir / "predictions_test.csv").is_file():
            base = test_predictions(base_dir, p)
            out["cohorts"][str(p)]["radiomics_subject_auc"] = _subject_auc(config, base)
            baseline.append(base)
    config = setup_config(setup, phantoms[0], tiny)
    scoring = ScoringPolicy.from_config(config.eval, network[0].class_names)
    net = crossval.concat(network)
    y, s = scoring.roc_data(net, "subject")
    out["pooled"]["subjects"] = int(len(y))
    out["pooled"]["network"] = _auc_ci(y, s, config)
    if len(baseline) == len(network):
        base = crossval.concat(baseline)
        yb, sb = scoring.roc_data(base, "subject")
        assert np.array_equal(y, yb)
        out["pooled"]["radiomics"] = _auc_ci(yb, sb, config)
        z, pval = stats.delong_test(y.astype(int), s, sb, positive=1)
        out["pooled"]["delong_network_vs_radiomics"] = {"z": float(z), "p": float(pval)}
    return out


def _subject_auc(config, preds: Predictions) -> float:
    scoring = ScoringPolicy.from_config(config.eval, preds.class_names)
    return float(scoring.score(preds)["subject"]["auc"])


def _auc_ci(y, scores, config) -> dict:
    auc, (low, high), _ = stats.roc_auc_with_ci(
        y.astype(bool), scores, method="delong", confidence=config.eval.confidence
    )
    return {"auc": float(auc), "low": float(low), "high": float(high)}


def report(results: dict, machine: dict, seeds) -> str:
    """learning.md: per setup, each cohort's mean subject AUC and the pooled subject AUC."""
    phantoms = sorted({p for r in results.values() for p in r["cohorts"]})
    lines = [
        "# Learning on the embedded generator's cohorts",
        "",
        f"{machine['cpu']} ({machine['cores']} cores), {machine['date']}. Test subject AUC, "
        f"default split; networks: mean (SD) over training seeds {list(seeds)}; radiomics: "
        "one fit. Pooled: every cohort's test subjects together, each subject's probability "
        "averaged over the seeds, DeLong 95% CI; p: DeLong, network against radiomics on the "
        "same subjects.",
        "",
        "| setup | "
        + " | ".join(f"cohort {p}: network / radiomics" for p in phantoms)
        + " | pooled subjects | pooled network AUC (CI) | pooled radiomics AUC (CI) | p |",
        "|---|" + "---|" * (len(phantoms) + 4),
    ]
    for setup in [s for s in SETUPS if s in results]:
        r = results[setup]
        cells = []
        for p in phantoms:
            c = r["cohorts"].get(p, {})
            base = c.get("radiomics_subject_auc")
            cells.append(
                f"{c.get('network_mean_subject_auc', float('nan')):.3f} "
                f"({c.get('network_sd_subject_auc', float('nan')):.3f}) / "
                + (f"{base:.3f}" if base is not None else "-")
            )
        pool = r["pooled"]
        net, base = pool["network"], pool.get("radiomics")
        fmt = lambda a: f"{a['auc']:.3f} ({a['low']:.3f}-{a['high']:.3f})"  # noqa: E731
        p = pool.get("delong_network_vs_radiomics", {}).get("p")
        lines.append(
            f"| {setup} | "
            + " | ".join(cells)
            + f" | {pool['subjects']} | {fmt(net)} | {fmt(base) if base else '-'} | "
            + (f"{p:.3g}" if p is not None else "-")
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    root, out = Path(FLAGS.workdir), Path(FLAGS.out)
    phantoms, seeds = [int(p) for p in FLAGS.phantom_seeds], [int(s) for s in FLAGS.seeds]
    path = out / "learning.json"
    results = json.loads(path.read_text())["results"] if path.is_file() else {}
    # The mask setups first: 3d_brain's radiomics reference is 3d_mask's.
    for setup in sorted(FLAGS.setups, key=lambda s: s.endswith("brain")):
        logging.info("learning benchmark: %s", setup)
        results[setup] = run_setup(setup, phantoms, seeds, root, FLAGS.tiny)
        for p in phantoms:
            text = (root / setup / f"phantom_{p}" / "repeat.md").read_text()
            atomic.write_text(out / "learning" / f"{setup}_phantom_{p}.md", text)
        machine = common.machine()
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps({"machine": machine, "results": results}, indent=1))
        atomic.write_text(out / "learning.md", report(results, machine, seeds))


def define_flags():
    """The command's flags (defined by `__main__` only, so tests can import the module)."""
    flags.DEFINE_list("setups", list(SETUPS), "setups to run")
    flags.DEFINE_list("phantom_seeds", ["0", "1", "2"], "embedded-generator cohorts")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "training seeds")
    flags.DEFINE_string("workdir", "/tmp/ernjax_learning", "where the runs train")
    flags.DEFINE_string("out", "benchmarks/results", "where learning.{json,md} go")
    flags.DEFINE_bool("tiny", False, "the configs' :tiny variants (a smoke run)")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
