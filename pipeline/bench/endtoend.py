"""End to end: the real per-slide stages as the workflow runs them, timed as subprocesses.

``qc-slide``, ``tile-slide``, ``score-tiles`` and ``summarize-slide`` with the rules' arguments, one after the
other; median wall time of ``repeats`` runs, per stage and in all, and each stage's own peak RSS (``wait4``).

Public: :data:`STAGES`, :func:`run_stage`, :func:`stage_commands`, :func:`measure_end_to_end`.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

from pipeline.errors import TriageError

STAGES = ("qc-slide", "tile-slide", "score-tiles", "summarize-slide")


# Runs one stage and writes "<wall seconds> <peak RSS kB>" of it to argv[1]. The stage is started from this
# small interpreter, not from the benchmark's own process: Linux carries the RSS high-water mark of the process
# that forks across exec, so a stage forked from a process holding torch would report that process's RSS.
_LAUNCHER = """\
import os, sys, time
t0 = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(f"{time.perf_counter() - t0} {usage.ru_maxrss}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_stage(cmd: list[str], log_path: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one stage subprocess; a failed stage is a TriageError."""
    figures = log_path.with_suffix(".time")
    with open(log_path, "wb") as log_fh:
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, str(figures), *cmd], stdout=subprocess.DEVNULL,
                              stderr=log_fh, check=False)
    if proc.returncode != 0:
        lines = log_path.read_text(errors="replace").strip().splitlines()
        raise TriageError(f"benchmark: `{cmd[3]}` failed (exit {proc.returncode}): "
                          f"{lines[-1] if lines else 'no output'}; full log {log_path}")
    seconds, rss_kb = figures.read_text().split()
    return float(seconds), int(rss_kb) * 1024  # Linux: ru_maxrss in kilobytes


def slide_commands(slide: Path, sid: str, out: Path, config: Path) -> dict[str, list[str]]:
    """qc-slide and tile-slide of one slide into ``out`` (pipeline/rules/slides.smk)."""
    py = [sys.executable, "-m", "pipeline"]
    return {
        "qc-slide": py + ["qc-slide", "--slide", str(slide), "--slide-id", sid, "--config", str(config),
                          "--out", str(out / "qc.json"), "--thumb", str(out / "thumb.png"),
                          "--mask", str(out / "tissue.png")],
        "tile-slide": py + ["tile-slide", "--slide", str(slide), "--slide-id", sid, "--config", str(config),
                            "--qc", str(out / "qc.json"), "--mask", str(out / "tissue.png"),
                            "--out", str(out / "tiles.parquet")],
    }


def stage_commands(slide: Path, out: Path, config: Path, model_dir: Path, threads: int,
                   batch_size: int) -> dict[str, list[str]]:
    """The workflow's per-slide H&E commands (pipeline/rules/slides.smk, he.smk, outputs.smk)."""
    py = [sys.executable, "-m", "pipeline"]
    sid = "bench"
    return {
        **slide_commands(slide, sid, out, config),
        "score-tiles": py + ["score-tiles", "--slide", str(slide), "--tiles", str(out / "tiles.parquet"),
                             "--model", str(model_dir), "--out", str(out / "scores.parquet"),
                             "--threads", str(threads), "--batch-size", str(batch_size), "--device", "auto",
                             # speed only: the untrained stand-in has no OOD statistics; a model with them
                             # is scored exactly as the workflow scores it (the flag then changes nothing)
                             "--allow-no-ood"],
        "summarize-slide": py + ["summarize-slide", "--slide-id", sid, "--case-id", "bench-case", "--stain", "HE",
                                 "--slide", str(slide), "--qc", str(out / "qc.json"),
                                 "--tiles", str(out / "tiles.parquet"), "--scores", str(out / "scores.parquet"),
                                 "--config", str(config), "--out", str(out / "summary.json")],
    }


def run_stages(commands: dict, stages, workdir: Path, repeats: int) -> tuple[list[dict], dict]:
    """Run ``stages`` one after the other ``repeats`` times: each run's seconds per stage, each stage's peak RSS."""
    runs, rss = [], dict.fromkeys(stages, 0)
    for _ in range(max(1, repeats)):
        times = {}
        for stage in stages:
            times[stage], peak = run_stage(commands[stage], workdir / f"{stage}.log")
            rss[stage] = max(rss[stage], peak)
        runs.append(times)
    return runs, rss


def measure_end_to_end(slide: Path, workdir: Path, config: Path, model_dir: Path, *, threads: int,
                       batch_size: int, repeats: int) -> dict:
    """Median wall time of the four stages run one after the other, per stage and in all; peak RSS per stage."""
    commands = stage_commands(slide, workdir, config, model_dir, threads, batch_size)
    runs, rss = run_stages(commands, STAGES, workdir, repeats)
    totals = [sum(r.values()) for r in runs]
    from pipeline.he.scoring import read_scores

    scores_meta = read_scores(workdir / "scores.parquet")[1]
    return {"repeats": len(runs), "seconds_median": round(statistics.median(totals), 2),
            "seconds_runs": [round(t, 2) for t in totals],
            "stage_seconds_median": {s: round(statistics.median(r[s] for r in runs), 2) for s in STAGES},
            "peak_rss_bytes": max(rss.values()), "stage_peak_rss_bytes": rss,
            "scoring": {k: scores_meta.get(k) for k in ("device", "precision", "readers", "prefetch", "tiles_per_s",
                                                         "status", "n_tiles")}}
