"""The config checked against the cohort as a whole, before any work (cohort, records, compile).

`check_config(config)` runs first in `prepare.prepare` (every run, study and baseline) and in
`studies.runs.shared_data`. It reads labels.csv only (no image; a BIDS cohort's participants.tsv
and folder names instead, each session an example under session "all"), and:

- `config.data.layout` and, for BIDS, `config.data.bids` (its queries, session and run choice,
  a mask when the config needs one); with every session its own example it sets
  `config.data.group_column` to participant_id if no group column is set;
- reads a comma-separated string given for a tuple field (`--config.data.classes=HGG,LGG`,
  which ml_collections' flag parser leaves as the one element 'HGG,LGG') as the tuple meant;
- `config.data.classes` against the labels labels.csv holds. The rule for the default classes:
  left at ('necrosis', 'recurrence') on a cohort whose labels.csv has exactly two other values,
  the classes become those two in sorted order, said in one log line naming class 0, class 1
  and the positive class. Any other mismatch (a configured class no subject has) stops with
  the labels found, their counts and the flag that fixes it. A label of a few rows outside the
  classes is left to `cohort.find_subjects`, whose message names the subject;
- `config.eval.positive_class` among the classes, `config.model.num_classes` their number,
  `config.data.channels` and `config.data.reference` among the modalities (errors with the flag);
- `config.data.normalize` a method; with "whitestripe", a contrast WhiteStripe knows for every
  channel's modality name (`whitestripe.CONTRASTS`: t1c takes the T1 rule);
- warns about modalities that no channel uses (each subject still needs the file) and about a
  mask that a 3D run on the whole brain reads but does not feed to the network;
- warns when a split would hold fewer than `MIN_PER_CLASS` subjects of a class, computed from
  labels.csv by the builder's own rule (`splits.assign_splits`), pointing to cross-validation.
  Subjects that then fail to load under on_error="skip" can change that split a little.
"""

import logging
import shlex
import unicodedata
from collections import Counter
from pathlib import Path

from ernjax.data import bids, geometry, layouts, split_file, splits, synthetic, whitestripe
from ernjax.data import cohort as cohort_lib
from ernjax.errors import InputError

DEFAULT_CLASSES = ("necrosis", "recurrence")  # ernjax/defaults.py's config.data.classes
MIN_PER_CLASS = 3  # fewer subjects of a class in a split: its metrics rest on one or two
CROSSVAL = (
    "python -m ernjax.crossval --config=CONFIG --workdir=W --config.data.split.test=0 "
    "--config.train.select_checkpoint=last"
)
SPLITS = ("train", "validation", "test")
RADIOMICS = "radiomics"  # the baseline's model name (ernjax.baselines.radiomics.MODEL_NAME)
# Warnings already given in this process: a study checks each run's config twice
# (`studies.runs.shared_data`, then `prepare`), and the folds of a cross-validation share one.
_WARNED: set[str] = set()


class ConfigError(InputError):
    """A setting that cannot work (with this cohort): names it, the file if any, and the fix.

    An InputError, so that every entry point ends with this one line and no traceback.
    """

    def __init__(self, problem: str, path=""):
        super().__init__("", path, problem)
        if not self.path:
            ValueError.__init__(self, problem)  # a setting, not the cohort: no "cohort:" prefix

    def __reduce__(self):
        return type(self), (self.problem, self.path)


def check_config(config, *, split_counts: bool = True) -> None:
    """Checks `config` against its cohort's labels.csv before any work; may set data.classes.

    Args:
      config: the full config (ernjax/defaults.py). Tuple fields given as one comma-separated
        string are split, and `config.data.classes` may be set from labels.csv (see the module
        docstring), in place.
      split_counts: also log each split's class counts and warn about small ones.

    Raises:
      ConfigError: classes that labels.csv does not hold, a positive class, number of classes,
        channel or reference that does not fit (each with the flag that fixes it).
    """
    split_comma_tuples(config)
    d = config.data
    _check_layout(config)
    labels_csv = layouts.labels_file(d.cohort_dir, d) if d.cohort_dir else None
    rows = _rows(labels_csv, d)
    if d.cohort_dir and rows is None:
        derived = False  # no cohort or labels.csv yet: find_subjects says so, in its words
    elif rows is None:
        _check_synthetic_classes(d.classes)
        derived = False
    else:
        derived = _check_classes(config, rows, labels_csv)
    if derived:
        classes = tuple(d.classes)
        logging.info(
            "config.data.classes taken from %s: class 0 = %s, class 1 = %s (sorted); the "
            "positive class is %s (config.eval.positive_class). Set --config.data.classes=%s "
            "to fix the order",
            labels_csv,
            classes[0],
            classes[1],
            config.eval.positive_class,
            tuple_flag(classes),
        )
    _check_positive_class(config, labels_csv if derived else None)
    _check_num_classes(config)
    _check_modalities(config, synthetic_cohort=not d.cohort_dir)
    _check_normalize(config)
    if split_counts and rows is not None:
        _split_counts(config, rows, labels_csv)


def _warn(message: str) -> None:
    """logging.warning, once per process for the same message."""
    if message not in _WARNED:
        _WARNED.add(message)
        logging.warning("%s", message)


# ----------------------------------------------------------------------------- tuples
def split_comma_tuples(config, prefix: str = "config") -> list[str]:
    """Splits one-string tuples holding commas, in place: ('HGG,LGG',) -> ('HGG', 'LGG').

    ml_collections parses `--config.data.classes=HGG,LGG` with `ast.literal_eval`, which fails
    on bare words, and then keeps the whole string as one element; numbers (`shape=64,64`) do
    parse. No label, modality or step name holds a comma, so the comma means a list.

    Returns:
      The names of the fields split.
    """
    done = []
    for key, value in config.items():
        name = f"{prefix}.{key}"
        if hasattr(value, "items"):
            done += split_comma_tuples(value, name)
        elif isinstance(value, tuple) and len(value) == 1 and _commas(value[0]):
            parts = tuple(p.strip() for p in value[0].split(",") if p.strip())
            with config.unlocked():
                config[key] = parts
            logging.info("%s=%r read as %r", name, value[0], parts)
            done.append(name)
    return done


def _commas(value) -> bool:
    return isinstance(value, str) and "," in value


def tuple_flag(values) -> str:
    """A tuple as the command line takes it: `"('HGG','LGG')"` (shell-quoted)."""
    inner = ",".join(repr(str(v)) for v in values) + ("," if len(values) == 1 else "")
    text = f"({inner})"
    return f'"{text}"' if not set(text) & set('"$`\\') else shlex.quote(text)


def _value_flag(value) -> str:
    return shlex.quote(str(value))


# ----------------------------------------------------------------------------- layout
def _check_layout(config) -> None:
    """config.data.layout and, for BIDS, its settings and queries; may set group_column.

    With every session its own example (session "all") and no group column, the group is the
    participant: two sessions of one patient in train and test would leak the patient.

    Raises:
      ConfigError: an unknown layout, BIDS without a cohort folder, a BIDS setting or query
        that is not valid, or a mask that the config needs and BIDS is not told how to find.
    """
    d = config.data
    layout = d.get("layout", "patterns")
    if layout not in layouts.LAYOUTS:
        raise ConfigError(
            f"config.data.layout={layout!r}: expected one of {', '.join(layouts.LAYOUTS)}"
        )
    if layout != "bids":
        return
    if not d.cohort_dir:
        raise ConfigError(
            "config.data.layout='bids' needs a BIDS cohort: set --config.data.cohort_dir (the "
            "synthetic cohort is not BIDS)"
        )
    try:
        bids.check_settings(d.bids)
        for name, query in d.bids.modalities.items():
            bids.parse_query(query, f"config.data.bids.modalities.{name}")
        if d.bids.mask:
            bids.parse_query(d.bids.mask, "config.data.bids.mask")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    needs = [
        w
        for w, on in (
            ("data.roi='mask'", d.get("roi") == "mask"),
            ("data.mask_channel", d.get("mask_channel", False)),
        )
        if on
    ]
    if needs and not d.bids.mask:
        raise ConfigError(
            f"{' and '.join(needs)} needs each subject's lesion mask, and config.data.bids.mask "
            "is empty: set --config.data.bids.mask to the masks' BIDS name, e.g. "
            "label-lesion_mask (found under config.data.bids.mask_dir, default derivatives/*, "
            "in sub-<id>/[ses-<s>/]anat/), or --config.data.roi=brain"
        )
    if d.bids.session == "all" and not d.get("group_column", ""):
        with d.unlocked():
            d.group_column = "participant_id"
        logging.info(
            "config.data.bids.session=all: each session is an example, and a participant's "
            "sessions stay in one split and fold (config.data.group_column=participant_id)"
        )


# ----------------------------------------------------------------------------- classes
def _rows(labels_csv: Path | None, data) -> list[dict] | None:
    """labels.csv's rows (BIDS: one per example), or None when there is no such file (yet)."""
    if labels_csv is None or not labels_csv.is_file():
        return None
    if layouts.is_bids(data):
        # No example at all (a session no participant has): find_subjects names a participant.
        return bids.label_rows(labels_csv.parent, data.bids) or None
    return cohort_lib.read_labels(labels_csv)


def _found(rows) -> tuple[Counter, int]:
    """(label -> subjects, subjects without a label) of labels.csv."""
    values = [r["label"] for r in rows]
    missing = sum(v in cohort_lib.MISSING_LABELS for v in values)
    return Counter(v for v in values if v not in cohort_lib.MISSING_LABELS), missing


def _labels_text(found: Counter, missing: int) -> str:
    """'HGG' (17 subjects) and 'LGG' (4), and 1 without a label."""
    items = sorted(found.items())
    parts = [f"{v!r} ({n} subject{'s' if n != 1 else ''})" for v, n in items[:1]]
    parts += [f"{v!r} ({n})" for v, n in items[1:]]
    text = splits._words(parts) if parts else "no label"
    return text + (f", and {missing} without a label" if missing else "")


def _check_classes(config, rows, labels_csv: Path) -> bool:
    """config.data.classes against labels.csv; True if they were set from it (the default rule).

    Raises:
      ConfigError: a configured class that no subject has (the classes do not fit the cohort).
    """
    d = config.data
    classes = tuple(str(c) for c in d.classes)
    found, missing = _found(rows)
    absent = [c for c in classes if c not in found]
    if not absent:
        return False  # a row with another label: find_subjects names its subject
    if classes == DEFAULT_CLASSES and len(found) == 2 and not set(found) & set(classes):
        with d.unlocked():
            d.classes = tuple(sorted(found))
        return True
    suggested = tuple(sorted(found))
    fix = f"set --config.data.classes={tuple_flag(suggested)}"
    if len(suggested) != config.model.num_classes:
        fix += f" and --config.model.num_classes={len(suggested)}"
    raise ConfigError(
        f"the labels are {_labels_text(found, missing)}, but config.data.classes="
        f"{classes} and no subject has the label {' or '.join(map(repr, absent))}: {fix} "
        "(the order gives the class index)",
        labels_csv,
    )


def _check_synthetic_classes(classes) -> None:
    """The synthetic cohort (no cohort_dir) has its own two labels."""
    if set(synthetic.CLASSES) - {str(c) for c in classes}:
        raise ConfigError(
            f"config.data.cohort_dir is empty, so the synthetic cohort is used, whose labels are "
            f"{' and '.join(synthetic.CLASSES)}, but config.data.classes={tuple(classes)}: set "
            f"--config.data.cohort_dir to your cohort, or --config.data.classes="
            f"{tuple_flag(synthetic.CLASSES)}"
        )


def _check_positive_class(config, derived_from: Path | None) -> None:
    """config.eval.positive_class among config.data.classes (ConfigError with the flag)."""
    classes = tuple(str(c) for c in config.data.classes)
    positive = config.eval.positive_class
    if positive in classes:
        return
    where = f" (taken from {derived_from})" if derived_from else ""
    options = " or ".join(f"--config.eval.positive_class={_value_flag(c)}" for c in classes[::-1])
    raise ConfigError(
        f"config.eval.positive_class={positive!r} is not one of the classes {classes}{where}: "
        f"set {options} (the class whose sensitivity is reported)"
    )


def _check_num_classes(config) -> None:
    """config.model.num_classes is the number of classes (a network's output layer)."""
    n, want = len(config.data.classes), config.model.num_classes
    if config.model.name != RADIOMICS and n != want:
        raise ConfigError(
            f"config.data.classes={tuple(config.data.classes)} has {n} classes but "
            f"config.model.num_classes={want}: set --config.model.num_classes={n}"
        )


# ----------------------------------------------------------------------------- modalities
def _check_modalities(config, *, synthetic_cohort: bool) -> None:
    """Channels and reference among the modalities (errors); unused modalities (a warning)."""
    d = config.data
    modalities, field = list(layouts.modalities(d)), layouts.modalities_field(d)
    shown = ", ".join(modalities)
    if missing := [c for c in d.channels if c not in modalities]:
        raise ConfigError(
            f"config.data.channels={tuple(d.channels)} names {', '.join(missing)}, which "
            f"{field} does not have (it has {shown}): add it to {field} or leave it out of "
            "config.data.channels"
        )
    if d.reference not in modalities:
        raise ConfigError(
            f"config.data.reference={d.reference!r} is not one of {field} "
            f"({shown}): set --config.data.reference to one of them"
        )
    if config.model.name == RADIOMICS:
        return  # the baseline's features cover every modality, inside the mask
    unused = [m for m in modalities if m not in d.channels and m != d.reference]
    if unused and not synthetic_cohort:  # the demo cohort holds every modality anyway
        names = ", ".join(unused)
        _warn(
            f"{field} has {names}, which config.data.channels="
            f"{tuple(d.channels)} leaves out: every subject must still have the file, but the "
            f"network does not see it. To use it: --config.data.channels="
            f"{tuple_flag((*d.channels, *unused))}; to not require it, leave it out of {field}"
        )
    mask_unused = d.kind == "volumes3d" and d.get("roi", "brain") == "brain"
    if layouts.mask(d) and mask_unused and not d.get("mask_channel", False):
        _warn(
            f"{layouts.mask_field(d)}={layouts.mask(d)!r}: for volumes3d with "
            "config.data.roi='brain' every subject must have the mask, but the volumes do not "
            "depend on it (the radiomics baseline reads it). --config.data.roi=mask centres a "
            "box of roi_size_mm on the lesion; --config.data.mask_channel=True adds the mask as "
            "a channel"
        )


# ----------------------------------------------------------------------------- normalization
def _check_normalize(config) -> None:
    """config.data.normalize is a method, and with WhiteStripe each channel's contrast is known.

    The radiomics baseline normalizes every modality, so there every modality's is checked.
    """
    d = config.data
    if config.model.name == RADIOMICS:
        names = list(layouts.modalities(d))
        field = f"{layouts.modalities_field(d)}: the radiomics baseline uses them all"
    else:
        names, field = list(d.channels), f"config.data.channels={tuple(d.channels)}"
    check_normalization(d.normalize, names, "config.data.normalize", field)


def check_normalization(method: str, names, setting: str, field: str) -> None:
    """A normalization method, and with WhiteStripe a known contrast for each modality name.

    Args:
      method: the configured method (`geometry.NORMALIZATIONS`).
      names: the modality names it will normalize.
      setting: the setting's name in the message, e.g. "config.data.normalize".
      field: where those names come from, in words (the message names it).

    Raises:
      ConfigError: an unknown method, or a name that `whitestripe.CONTRASTS` does not hold.
    """
    if method not in geometry.NORMALIZATIONS:
        raise ConfigError(
            f"{setting}={method!r} is not a normalization: set --{setting} to "
            f"{', '.join(geometry.NORMALIZATIONS[:-1])} or {geometry.NORMALIZATIONS[-1]}"
        )
    unknown = [n for n in names if whitestripe.contrast_of(n) is None]
    if method != "whitestripe" or not unknown:
        return
    by_rule = {}
    for name, rule in whitestripe.CONTRASTS.items():
        by_rule.setdefault(rule, []).append(name)
    known = "; ".join(f"{rule.upper()}: {', '.join(n)}" for rule, n in by_rule.items())
    raise ConfigError(
        f"{setting}='whitestripe' finds the white matter by each image's contrast, which it "
        f"does not know for {', '.join(map(repr, unknown))} (of {field}): name each modality "
        f"by its contrast ({known}), or set --{setting}=zscore"
    )


# ----------------------------------------------------------------------------- split counts
def _split_counts(config, rows, labels_csv: Path) -> None:
    """Logs each split's class counts (from labels.csv) and warns about small ones."""
    d = config.data
    subjects = _splittable(rows, labels_csv.parent, d)
    column = d.get("group_column", "")
    if not subjects or (column and any(not r.get(column) for r in subjects)):
        return  # no subject, or groups the builder refuses in its words
    ids = [r["subject_id"] for r in subjects]
    labels = [list(d.classes).index(r["label"]) for r in subjects]
    groups = [r[column] for r in subjects] if column else ids
    s, fold = d.split, d.get("fold", -1)
    by_group = list(splits.group_labels(labels, groups).values())
    if not s.get("file", "") and _problem(by_group, d.classes, s):
        return  # a split would lack a class: the builder stops with the counts and the fix
    split_of = _split_of(config, ids, labels, groups)
    if split_of is None:
        return
    counts = {name: Counter() for name in SPLITS}
    for r in subjects:
        counts[split_of[r["subject_id"]]][r["label"]] += 1
    shown = "; ".join(
        f"{name} " + ", ".join(f"{counts[name][c]} {c}" for c in d.classes)
        for name in SPLITS
        if counts[name]
    )
    logging.info("split of %d labelled subjects (from %s): %s", len(ids), labels_csv, shown)
    wanted = ["train"]
    if s.validation > 0 or fold >= 0:
        # In a fold of a cross-validation scoring its last checkpoint, validation is only the
        # fold's share of the pooled out-of-fold predictions: small by design.
        if not (fold >= 0 and config.train.select_checkpoint == "last"):
            wanted.append("validation")
    if s.test > 0 or s.get("file", ""):
        wanted.append("test")
    few = [
        f"{name} {counts[name][c]} {c}"
        for name in wanted
        for c in d.classes
        if counts[name][c] < MIN_PER_CLASS and sum(counts[name].values())
    ]
    if few:
        _warn(_small_split_warning(config, few))


def _small_split_warning(config, few: list[str]) -> str:
    """The warning about splits with fewer than MIN_PER_CLASS subjects of a class."""
    picked = (
        " The best checkpoint (config.train.select_checkpoint='best') is then chosen on those "
        "validation subjects."
        if config.train.select_checkpoint == "best" and any(f.startswith("validation") for f in few)
        else ""
    )
    return (
        f"a split holds fewer than {MIN_PER_CLASS} subjects of a class ({'; '.join(few)}): "
        f"its AUC, sensitivity and specificity rest on one or two patients.{picked} For a cohort "
        f"this small, cross-validate with nothing held out: {CROSSVAL} (README, Real-data "
        "benchmarks)"
    )


def _problem(labels, classes, s) -> str:
    """splits.split_problem, or "" when the fractions are out of range (the builder says so)."""
    try:
        return splits.split_problem(labels, classes, test=s.test, validation=s.validation)
    except ValueError:
        return ""


def _splittable(rows, cohort: Path, data) -> list[dict]:
    """The rows the builder would split: a label among the classes, a folder, listed once."""
    if layouts.is_bids(data):  # `bids.label_rows` gives only examples with a folder
        folders = {r["subject_id"] for r in rows}
    else:
        folders = {unicodedata.normalize("NFC", p.name) for p in cohort.iterdir() if p.is_dir()}
    seen = Counter(r["subject_id"] for r in rows)
    names = {str(c) for c in data.classes}
    return [
        r
        for r in rows
        if r["label"] in names and r["subject_id"] in folders and seen[r["subject_id"]] == 1
    ]


def _split_of(config, ids, labels, groups) -> dict[str, str] | None:
    """Each subject's split by the builder's rule (or the split file's), the fold applied."""
    d, s = config.data, config.data.split
    if s.get("file", ""):
        if not Path(s.file).is_file():
            return None  # the builder says so
        fixed = split_file.read(s.file, s.folds)
        assignment = {
            sid: fixed.get(sid, {"split": "train", "fold": 0}) for sid in ids
        }  # subjects the file lacks: train or validation (approximate, for counting only)
    else:
        try:
            assignment = splits.assign_splits(
                ids,
                labels,
                test=s.test,
                validation=s.validation,
                folds=s.folds,
                seed=s.seed,
                groups=groups,
            )
        except ValueError:
            return None  # fractions out of range: the builder says so
    try:
        return splits.select_fold(assignment, d.get("fold", -1))
    except ValueError:
        return None  # a fold without subject: prepare says so
