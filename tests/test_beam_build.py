"""The records build through Apache Beam (ernjax.data.beam_build): the in-process build's records.

Needs the [beam] extra, which the [test] extra installs; without it the tests skip.
"""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_records import DUMMY, small_data

from ernjax.data import records
from ernjax.errors import InputError

beam = pytest.importorskip(
    "apache_beam", reason="Apache Beam is not installed (pip install -e '.[beam]')"
)
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Beam 2.77's DirectRunner first tries Prism, a binary it downloads from GitHub: a local file that
# is not there makes it fall back at once, without the network, to the FnApiRunner (as offline).
NO_PRISM = "--prism_location=/nonexistent/prism"


def _files(path: Path, shards: bool = True) -> dict[str, str]:
    """Digest of every file of a records folder: shards, dataset_info.json, index.json, ..."""
    files = [p for p in sorted(path.iterdir()) if shards or ".array_record-" not in p.name]
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in files}


def _examples(recs: records.Records) -> dict[str, list[dict]]:
    """Every example of every split, decoded, in record order."""
    return {s: list(recs.source(s)) for s in recs.index["splits"]}


def _same_examples(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        len(a[s]) == len(b[s])
        and all(
            x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
            for x, y in zip(a[s], b[s], strict=True)
        )
        for s in a
    )


def test_beam_build_from_the_command_line_gives_the_in_process_records(tmp_path):
    work = tmp_path / "work"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ernjax.data.build",
            "--config=configs/ern.py:tiny",
            f"--workdir={work}",
            f"--config.data.cohort_dir={DUMMY}",
            "--config.data.mask_pattern=*_mask.nii.gz",
            "--config.data.shape=(16, 16)",
            "--config.data.split.folds=2",
            "--config.data.build_workers=1",
            "--beam_runner=DirectRunner",
            # Two worker processes: every subject is loaded in a process the build did not start.
            f"--beam_options={NO_PRISM} --direct_num_workers=2 "
            "--direct_running_mode=multi_processing",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "records: " in run.stdout
    built = next((work / "records" / "ernjax_mri").glob("slices2d-*/1.0.0"))
    beam_files = _files(built)
    # The run with the same settings finds them (python -m ernjax.main builds through this).
    found = records.build(small_data("slices2d"), DUMMY, work / "records")
    assert found.path == built and _files(built) == beam_files
    # The in-process build: the same examples in the same order in every split, and the same
    # split, metadata, dataset_info.json and index, byte for byte. The shards' bytes differ in
    # the order of the features inside each serialized example, which TFDS takes from a set of
    # their names (so from the string hash, random in each process: two in-process builds in two
    # processes differ so too; in one process they are the same bytes, as the next test shows).
    here = records.build(small_data("slices2d"), DUMMY, tmp_path / "here")
    assert here.path.name == built.name and here.path.parent.name == built.parent.name
    assert _files(here.path, shards=False) == _files(built, shards=False)
    assert _same_examples(_examples(here), _examples(found))
    assert sum(len(s["label"]) for s in here.index["splits"].values()) > 10  # slices


@pytest.fixture
def cohort(tmp_path) -> Path:
    out = tmp_path / "cohort"
    shutil.copytree(DUMMY, out)
    bad = out / "dummy-04" / "dummy-04_t2.nii.gz"
    bad.write_bytes(bad.read_bytes()[:100])  # a truncated download
    return out


def test_beam_build_skips_and_refuses_a_subject_as_the_in_process_build(cohort, tmp_path):
    direct = dict(beam_runner="DirectRunner", beam_options=PipelineOptions([NO_PRISM]))
    # on_error="skip": the split made on the 9 subjects that loaded, dummy-04 in the metadata.
    data = small_data("volumes3d", on_error="skip")
    here = records.build(data, cohort, tmp_path / "here")
    there = records.build(data, cohort, tmp_path / "beam", **direct)
    assert [s["subject_id"] for s in there.index["skipped"]] == ["dummy-04"]
    assert "dummy-04" not in there.index["assignment"] and len(there.index["assignment"]) == 9
    assert _files(there.path) == _files(here.path)  # one process (the FnApiRunner's): same bytes
    # on_error="raise": the worker's error, naming the subject, the file and the problem.
    with pytest.raises(InputError, match="subject dummy-04, file .*dummy-04_t2.nii.gz: ") as e:
        records.build(small_data("volumes3d"), cohort, tmp_path / "refused", **direct)
    assert e.value.subject == "dummy-04" and e.value.problem
    assert [p for p in (tmp_path / "refused").rglob("*") if p.is_file()] == []
    meta = json.loads((there.path / "metadata.json").read_text())
    assert meta["skipped"] == there.index["skipped"]
