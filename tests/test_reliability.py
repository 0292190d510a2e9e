"""Reliability on the sample cohort: killed runs resume to the same bytes, clean runs are reproducible, no
partial file is ever visible under its final name, and no output carries the slides' identifiers.

One interrupted run (SIGKILL of the whole Snakemake process group at three points: during tiling, while
H&E slides are being scored, while summaries are being written), resumed each time with the README's
command line (unlock + rerun-incomplete, as `make demo` does), is compared file by file with the session's
clean run (`cohort_run`): two independent runs, so this is also the reproducibility check.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, absolute_sheet, require_sample_cohort, snakemake_cmd
from pipeline.synth.tiff_writer import FAKE_IDENTIFIERS

# run metadata records when and where a run happened, and the effective config (results/config.yaml) names the
# run's own sample sheet file; everything else must be byte-identical
VOLATILE = {"run_metadata.json", "config.yaml"}


def _digest(p: Path) -> str:
    """SHA-256 of the bytes; for Parquet, of the table data and its metadata less the timings (seconds, tiles/s)
    that the scores record by design."""
    if p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        meta = {k.decode(): json.loads(v) if k == b"slide_triage" else v.decode()
                for k, v in (table.schema.metadata or {}).items() if k != b"ARROW:schema"}
        for timing in ("seconds", "tiles_per_s"):
            meta.get("slide_triage", {}).pop(timing, None)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema.remove_metadata()) as w:
            w.write_table(table.replace_schema_metadata(None))
        data = sink.getvalue().to_pybytes() + json.dumps(meta, sort_keys=True).encode()
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha256(p.read_bytes()).hexdigest()


def file_digests(results: Path) -> dict[str, str]:
    return {str(p.relative_to(results)): _digest(p)
            for p in sorted(results.rglob("*")) if p.is_file() and p.name not in VOLATILE
            and not p.name.startswith(".")}


def _complete(path: Path) -> None:
    """Raise if a final-named output file is truncated or half-written."""
    if path.suffix == ".json" or path.suffix == ".geojson":
        json.loads(path.read_text())
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.read_table(path)
    elif path.suffix == ".png":
        from PIL import Image

        with Image.open(path) as im:
            im.load()
    elif path.suffix == ".html":
        assert path.read_text().rstrip().endswith("</html>"), path


def _run_until(cmd: list[str], workdir: Path, pattern: str, count: int, timeout: float = 300) -> bool:
    """Start the workflow; SIGKILL its process group once ``count`` files match ``pattern``. True if killed."""
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if len(list((workdir / "results").glob(pattern))) >= count:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.05)
        raise AssertionError(f"workflow did not reach {count} x {pattern} in {timeout} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory) -> tuple[Path, list[str]]:
    require_sample_cohort()
    workdir = tmp_path_factory.mktemp("killed_run")
    sheet = absolute_sheet(workdir / "samples.tsv")
    cmd = snakemake_cmd(workdir, sheet, "--rerun-incomplete")
    unlock = snakemake_cmd(workdir, sheet, "--unlock")
    kills = []
    for pattern, count in (("slides/*/tiles.parquet", 3), ("slides/*/scores.parquet", 2),
                           ("slides/*/summary.json", 4)):
        subprocess.run(unlock, cwd=workdir, capture_output=True, timeout=120)
        if _run_until(cmd, workdir, pattern, count):
            kills.append(pattern)
        for p in (workdir / "results").rglob("*"):  # after a kill: every final-named file is whole
            if p.is_file() and not p.name.startswith("."):
                _complete(p)
    subprocess.run(unlock, cwd=workdir, capture_output=True, timeout=120)
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir, kills


def test_killed_runs_resume_to_the_same_bytes_as_a_clean_run(resumed_run, cohort_run):
    workdir, kills = resumed_run
    assert len(kills) == 3, f"the run finished before all kill points: killed at {kills}"
    clean, resumed = file_digests(cohort_run / "results"), file_digests(workdir / "results")
    assert clean.keys() == resumed.keys()
    differ = sorted(k for k in clean if clean[k] != resumed[k])
    assert not differ, f"differ between a clean and a killed-and-resumed run: {differ[:10]}"


def test_no_temporary_file_is_left_behind(resumed_run):
    workdir, _ = resumed_run
    leftovers = [p for p in (workdir / "results").rglob("*") if p.is_file() and p.name.startswith(".")
                 and p.name.endswith(".tmp")]
    assert not leftovers


def test_no_output_carries_the_slides_identifiers(cohort_run):
    """The sample SVS files carry a fake label, macro and identifying properties (FAKE_IDENTIFIERS)."""
    needles = [v.encode() for k, v in FAKE_IDENTIFIERS.items() if len(v) >= 6]
    hits = []
    for p in (cohort_run / "results").rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            hits += [(str(p), n.decode()) for n in needles if n in data]
    assert not hits, hits


def test_sample_slides_really_carry_identifiers():
    """Guard for the test above: the generator did write what must not leak."""
    import openslide

    require_sample_cohort()
    s = openslide.OpenSlide(str(ROOT / "slides_sample" / "A-HE.svs"))
    assert {"label", "macro"} <= set(s.associated_images)
    assert FAKE_IDENTIFIERS["Filename"] in s.properties.get("aperio.Filename", "")
