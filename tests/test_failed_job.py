"""Nothing disappears from the worklist: a scoring job killed mid-run (as the out-of-memory killer does) still
leaves a report that lists its case first as "failed: no result" with the job's log, the other cases as usual."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, absolute_sheet, require_sample_cohort, snakemake_cmd
from pipeline.outputs.report import partial_inputs
from pipeline.outputs.worklist import FAILED_CALL, worklist_rows

KILLED = "D-HE"  # no tumour: without the failure it would be last on the worklist


def _score_tiles_pid(slide_path: str) -> int | None:
    """The pid of a running `score-tiles --slide slide_path` process, if any."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"score-tiles" in argv and slide_path.encode() in argv:
            return int(proc.name)
    return None


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """Cases B (carcinoma, 3 slides) and D (no tumour, 1 slide); D's score_tiles job is SIGKILLed."""
    require_sample_cohort()
    workdir = tmp_path_factory.mktemp("killed_job")
    sheet = absolute_sheet(workdir / "samples.tsv", keep=lambda r: r["case_id"] in {"B", "D"})
    slide_path = str((ROOT / "slides_sample" / "D-HE.tif").resolve())
    proc = subprocess.Popen(snakemake_cmd(workdir, sheet), cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    killed = False
    deadline = time.monotonic() + 600
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            pid = None if killed else _score_tiles_pid(slide_path)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed = True
            time.sleep(0.02)
        output = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert killed, "the score_tiles job of D-HE was never seen running"
    return workdir, proc.returncode, output


def test_killed_scoring_job_still_gives_a_worklist_with_its_case_first(killed_run):
    workdir, returncode, output = killed_run
    assert returncode != 0, output[-3000:]  # the run still fails: nothing pretends it went well
    results = workdir / "results"
    with open(results / "worklist.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    cases = [r for r in rows if r["level"] == "case"]
    assert [r["case_id"] for r in cases] == ["D", "B"], [(r["case_id"], r["call"]) for r in cases]
    log = f"logs/score_tiles/{KILLED}.log"
    assert cases[0]["call"] == FAILED_CALL and cases[0]["priority"] == "0", cases[0]
    assert log in cases[0]["reason"] and (workdir / log).is_file(), cases[0]
    killed = [r for r in rows if r["slide_id"] == KILLED]
    assert len(killed) == 1 and killed[0]["call"] == FAILED_CALL and log in killed[0]["reason"], killed
    assert cases[1]["call"] == "favours metastatic carcinoma", cases[1]
    assert {r["slide_id"] for r in rows if r["case_id"] == "B" and r["level"] == "slide"} == {
        "B-HE", "B-CK_AE1AE3", "B-p40"}
    page = (results / "report.html").read_text()
    assert page.index("Case D:") < page.index("Case B:") and log in page and FAILED_CALL in page


def test_a_stale_summary_is_not_shown_as_current(tmp_path):
    """A summary older than the scores it is made from (scoring re-ran and failed after it) is not used."""
    old, new = tmp_path / "summary.json", tmp_path / "scores.parquet"
    old.write_text("{}")
    new.write_text("x")
    os.utime(old, (1_000, 1_000))
    jobs = [{"case_id": "C", "slide_id": "C-HE", "stain": "HE", "rule": "score_tiles", "output": str(new),
             "log": str(tmp_path / "missing.log")},
            {"case_id": "C", "slide_id": "C-HE", "stain": "HE", "rule": "summarize_slide", "output": str(old),
             "log": str(tmp_path / "s.log")},
            {"case_id": "C", "slide_id": "", "stain": "", "rule": "call_case", "output": str(tmp_path / "c.json"),
             "log": str(tmp_path / "c.log")}]
    stale, stand_ins, failures = partial_inputs(jobs)
    assert stale == {str(old), str(tmp_path / "c.json")}
    assert [f["rule"] for f in failures["C"]] == ["summarize_slide"]
    rows = worklist_rows({}, stand_ins, failures)
    assert rows[0]["call"] == FAILED_CALL and "summarize_slide did not run for C-HE" in rows[0]["reason"]
