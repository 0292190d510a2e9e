"""The workflow on a real SLURM: the README's cluster command runs every job as a SLURM job, gives the results of
a local run, and reports a failing slide job without losing the other slides' results.

Needs a running SLURM whose nodes share this filesystem: CI starts a single-node one with
`tests/cluster/slurm.sh install && tests/cluster/slurm.sh start` (see .ci/run); elsewhere the tests skip.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MODEL_DIR_NAME, ROOT, absolute_sheet, require_sample_cohort

PROFILE = "configs/profiles/slurm"  # the README's cluster command: snakemake --profile configs/profiles/slurm
# A whole run. On timeout, one SIGINT to Snakemake alone (--foreground: not to its process group, whose second
# SIGINT would interrupt it cancelling its SLURM jobs with scancel), SIGKILL a minute later.
RUN_TIMEOUT_S = 900
# Files that record the run itself, not results: times, host and command line; the effective config names the
# run's own sample sheet file.
RUN_FACTS = {"run_metadata.json", "config.yaml"}
GIT_COMMITS = re.compile(rb"[0-9a-f]{40}(?:, [0-9a-f]{40})*")
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def require_slurm() -> None:
    if shutil.which("sinfo") is None:
        pytest.skip("SLURM not installed (no sinfo): run `tests/cluster/slurm.sh install` and `start` as root "
                    "(CI does, see .ci/run)")
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.skip("SLURM does not answer (`sinfo -h` timed out): start it with `tests/cluster/slurm.sh start`")
    if proc.returncode != 0:
        pytest.skip(f"SLURM does not answer (`sinfo -h`: {proc.stderr.strip()}): start it with "
                    "`tests/cluster/slurm.sh start`")
    states = proc.stdout.split()
    if not any(s.rstrip("*~#!%$@^-") in {"idle", "mix", "alloc", "comp"} for s in states):
        pytest.skip(f"SLURM answers but has no usable node (node states: {states or 'none'})")


def cluster_cmd(workdir: Path, sheet: Path) -> list[str]:
    """The README's cluster command plus test-only overrides: inputs and outputs in ``workdir``, status checks
    every few seconds instead of the profile's 40 s (one user on an empty cluster), successful jobs' SLURM logs
    kept (they show which rules ran in each SLURM job)."""
    return ["timeout", "--foreground", "-k", "60", "-s", "INT", str(RUN_TIMEOUT_S),
            sys.executable, "-m", "snakemake", "--profile", str(ROOT / PROFILE),
            "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(ROOT / "configs" / "config.yaml"),
            "--config", f"samples={sheet}", f"markers={ROOT / 'configs' / 'markers.yaml'}",
            f"model={ROOT / 'models' / MODEL_DIR_NAME}",
            "--slurm-init-seconds-before-status-checks", "3", "--slurm-keep-successful-logs"]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S + 120)
    proc.output = proc.stdout + proc.stderr  # Snakemake logs to stderr
    assert proc.returncode not in (124, 137), "the SLURM run timed out:\n" + proc.output[-4000:]
    return proc


def job_stats(output: str) -> dict[str, int]:
    """Snakemake's "Job stats" table (rule -> number of jobs) of a run's log."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


def sheet_rows(sheet: Path) -> list[dict]:
    with open(sheet, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def file_digests(results: Path) -> dict[str, str]:
    return {str(p.relative_to(results)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(results.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")  # session: set up (or skipped) before the session-scoped cohort_run
def slurm_run(tmp_path_factory):
    """One run of the sample cohort through SLURM; returns (work directory, finished process)."""
    require_sample_cohort()
    require_slurm()
    workdir = tmp_path_factory.mktemp("slurm_run")
    sheet = absolute_sheet(workdir / "samples.tsv")
    proc = run(cluster_cmd(workdir, sheet))
    assert proc.returncode == 0, proc.output[-6000:]
    return workdir, proc


def test_every_job_ran_as_a_slurm_job(slurm_run):
    workdir, proc = slurm_run
    submitted = dict(SUBMITTED.findall(proc.output))  # SLURM job id -> its log
    assert submitted, proc.output[-3000:]
    # Nothing ran on the submit host but the target rule `all` (no command): each rule's job ran inside one of
    # the SLURM jobs, whose log says so.
    assert set(re.findall(r"^localrule (\w+):$", proc.output, re.M)) <= {"all"}
    ran: dict[str, int] = {}
    for job_id, log in submitted.items():
        text = Path(log).read_text()
        assert f"/{job_id}.log" in log
        for rule in re.findall(r"^localrule (\w+):$", text, re.M):
            ran[rule] = ran.get(rule, 0) + 1
    assert ran == {rule: n for rule, n in job_stats(proc.output).items() if rule != "all"}
    # One slide is one SLURM job, but a case's H&E and IHC slides are one (its IHC slides are read in the tumour of
    # its H&E slide): a group job per such case or per other slide, plus one job per case and one for the report.
    slides = sheet_rows(workdir / "samples.tsv")
    cases: dict[str, list[str]] = {}
    for row in slides:
        cases.setdefault(row["case_id"], []).append(row["stain"])
    expected = sum(1 if "HE" in stains and set(stains) - {"HE"} else len(stains) for stains in cases.values())
    group_jobs = [log for log in submitted.values() if "/group_slide" in log]
    assert len(group_jobs) == expected
    assert len(submitted) == expected + ran.get("call_case", 0) + ran.get("make_report", 0)
    # SLURM itself ran them: those it still remembers (MinJobAge) are the ones submitted, all COMPLETED.
    run_id = re.search(r"SLURM run ID: (\S+)", proc.output).group(1)
    queue = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i %T", "--name", run_id],
                           capture_output=True, text=True, timeout=30, check=True).stdout.split("\n")
    seen = dict(line.split() for line in queue if line.strip())
    assert set(seen) <= set(submitted) and set(seen.values()) <= {"COMPLETED"}, seen


def result_view(path: Path):
    """What must be equal between two runs: Parquet tables without their metadata (which times the stage), JSON
    and HTML without git commits (commits may land between the local and the SLURM run of a test session), else
    bytes."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).replace_schema_metadata(None).to_pydict()
    if path.suffix == ".json":
        def drop_commit(obj):
            if isinstance(obj, dict):
                return {k: drop_commit(v) for k, v in obj.items() if k != "git_commit"}
            return [drop_commit(v) for v in obj] if isinstance(obj, list) else obj

        return drop_commit(json.loads(path.read_text()))
    if path.suffix == ".html":
        return GIT_COMMITS.sub(b"<commit>", path.read_bytes())
    return path.read_bytes()


def test_results_equal_a_local_run(slurm_run, cohort_run):
    """Every result file (summary.json per slide, worklist.tsv, ...) but the run's own facts."""
    workdir, _ = slurm_run
    local, cluster = cohort_run / "results", workdir / "results"
    names = sorted(file_digests(local))
    assert sorted(file_digests(cluster)) == names
    assert "worklist.tsv" in names and any(name.endswith("/summary.json") for name in names)
    differ = [name for name in names
              if name not in RUN_FACTS and result_view(cluster / name) != result_view(local / name)]
    assert differ == []


def test_a_failing_slide_job_is_reported_and_the_other_slides_kept(slurm_run, tmp_path):
    """Two slides join the finished run: a truncated copy (the pipeline records it as failed) and one whose job
    fails on the node (a directory stands where its QC file must go, like a broken disk or mount). The run
    reports the failed SLURM job, exits non-zero, every earlier result stays as it was, and the worklist written
    after the failure lists every case, the blocked one first."""
    workdir, _ = slurm_run
    results = workdir / "results"
    before = file_digests(results)
    slides = sheet_rows(workdir / "samples.tsv")
    he_slide = next(r for r in slides if r["stain"] == "HE")
    source = Path(he_slide["path"])
    data = source.read_bytes()
    truncated = tmp_path / f"truncated{source.suffix}"
    truncated.write_bytes(data[: len(data) // 3])
    blocked = tmp_path / f"blocked{source.suffix}"
    blocked.write_bytes(data)
    (results / "slides" / "Z-BLOCKED" / "qc.json" / "in-the-way").mkdir(parents=True)
    # The same sheet file, so the run's config is unchanged and finished slides are not redone.
    extra = [{"case_id": "Z1", "slide_id": "Z-TRUNC", "path": str(truncated), "stain": "HE", "mpp": ""},
             {"case_id": "Z2", "slide_id": "Z-BLOCKED", "path": str(blocked), "stain": "HE", "mpp": ""}]
    sheet = workdir / "samples.tsv"
    absolute_sheet(sheet, source=sheet, extra_rows=extra)

    proc = run(cluster_cmd(workdir, sheet))

    assert proc.returncode != 0, proc.output[-4000:]
    submitted = dict(SUBMITTED.findall(proc.output))
    failed_logs = re.findall(r"message: Error in group slide\n\s+log: (\S+)", proc.output)
    assert failed_logs and set(failed_logs) <= set(submitted.values()), proc.output[-4000:]
    assert all("slide=Z-BLOCKED" in Path(log).read_text() for log in failed_logs)
    assert not (results / "slides" / "Z-BLOCKED" / "summary.json").exists()
    # The truncated slide's job succeeded with a failed record; every earlier file is untouched.
    # (summary.json where the workflow makes one for the H&E slide it is copied from)
    for name in ("qc.json", "summary.json"):
        if name == "qc.json" or (results / "slides" / he_slide["slide_id"] / name).exists():
            record = json.loads((results / "slides" / "Z-TRUNC" / name).read_text())
            assert record["status"] == "failed", (name, record)
    after = file_digests(results)
    report = {"worklist.tsv", "report.html", "run_metadata.json"}  # rewritten by the onerror report (issue 13)
    assert {name: after.get(name) for name in before if name not in report} == \
        {name: d for name, d in before.items() if name not in report}
    # Nothing disappears: the worklist lists every case, the failed one first with its job's log.
    with open(results / "worklist.tsv", newline="", encoding="utf-8") as fh:
        cases = [r for r in csv.DictReader(fh, delimiter="\t") if r.get("level") == "case"]
    assert cases[0]["case_id"] == "Z2" and "failed: no result" in json.dumps(cases[0]), cases[0]
    assert {r["case_id"] for r in cases} >= {"Z1", "Z2", *{r["case_id"] for r in slides}}
