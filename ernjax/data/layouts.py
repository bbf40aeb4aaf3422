"""How a cohort folder is laid out (`config.data.layout`), and the one call that reads either.

  patterns  labels.csv + one glob per modality relative to the subject folder
            (`config.data.modalities`, `config.data.mask_pattern`: ernjax.data.cohort);
  bids      participants.tsv + BIDS names (`config.data.bids`: ernjax.data.bids).

Both give the same `cohort.Subject`s, so everything after finding the files is the same.
"""

import dataclasses
from pathlib import Path

from ernjax.data import bids, cohort
from ernjax.data.spec import LAYOUTS  # noqa: F401 (the layouts, named here too)

BIDS_FIELDS = ("label_column", "session", "mask_dir", "run")  # config.data.bids less the queries


def is_bids(data) -> bool:
    """True if `data` (config.data, a SampleSpec or its dict) is laid out as BIDS."""
    layout = getattr(data, "layout", None) if not hasattr(data, "get") else data.get("layout")
    return layout == "bids"


def modalities(data) -> dict[str, str]:
    """config.data's modality name -> how it is found: a glob, or a BIDS query under bids."""
    return dict(data.bids.modalities if is_bids(data) else data.modalities)


def mask(data) -> str:
    """config.data's lesion mask: its glob, or its BIDS query under bids ("" for none)."""
    return str(data.bids.mask if is_bids(data) else data.mask_pattern)


def modalities_field(data) -> str:
    """The config field that holds the modalities, for messages."""
    return "config.data.bids.modalities" if is_bids(data) else "config.data.modalities"


def mask_field(data) -> str:
    """The config field that holds the mask, for messages."""
    return "config.data.bids.mask" if is_bids(data) else "config.data.mask_pattern"


def labels_file(cohort_dir, data) -> Path:
    """The cohort's table of labels: labels.csv, or participants.tsv under bids."""
    return Path(cohort_dir) / (bids.PARTICIPANTS if is_bids(data) else "labels.csv")


def find(cohort_dir, spec, *, on_error: str | None = None, **kw) -> cohort.Cohort:
    """The cohort's Subjects as the SampleSpec `spec` finds them, in its layout.

    Args:
      cohort_dir: the cohort folder.
      spec: the SampleSpec (its modalities, mask, columns, classes, layout and bids settings).
      on_error: overrides `spec.on_error`.
      **kw: passed on (labels_required).

    Returns:
      The cohort, subjects sorted by ID.
    """
    args = dict(
        slices_column=spec.slices_column,
        centre_column=spec.centre_column,
        classes=spec.classes,
        on_error=on_error or spec.on_error,
        **kw,
    )
    if spec.layout == "bids":
        settings = dataclasses.asdict(spec.bids)
        return bids.find_subjects(
            cohort_dir, dict(spec.modalities), settings, mask=spec.mask_pattern, **args
        )
    return cohort.find_subjects(
        cohort_dir, dict(spec.modalities), mask_pattern=spec.mask_pattern, **args
    )


def columns(cohort_dir, data) -> list[str]:
    """The columns of the cohort's table of labels (bids: participants.tsv's, and session)."""
    if is_bids(data):
        rows = bids.read_participants(cohort_dir, data.bids.label_column)
        return [*(rows[0] if rows else ["participant_id"]), "session"]
    return list(cohort.read_labels(labels_file(cohort_dir, data))[0])
