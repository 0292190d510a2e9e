"""The IHC stage timed: an IHC slide registered onto its H&E slide and quantified, per cell in the tumour region.

The real verbs as the workflow's rules run them (pipeline/rules/ihc.smk), each a subprocess:

* prerequisites, once, timed but outside the target: ``qc-slide`` and ``tile-slide`` of the IHC slide (the same
  per-slide stages as an H&E slide's);
* the measured pair, median of ``repeats`` runs: ``register-ihc`` (IHC onto H&E) then ``quantify-ihc`` with the
  registration and the H&E slide's ``tiles.parquet`` and ``scores.parquet`` from the end-to-end run, so the tumour
  region's tiles are also scored cell by cell.

Public: :data:`IHC_STAGES`, :func:`ihc_commands`, :func:`measure_ihc`.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from pipeline import atomic
from pipeline.bench.endtoend import run_stage, run_stages, slide_commands

PREREQUISITES = ("qc-slide", "tile-slide")
IHC_STAGES = ("register-ihc", "quantify-ihc")


def ihc_commands(ihc_slide: Path, he_slide: Path, he_out: Path, out: Path, config: Path, markers: Path,
                 marker: str, threads: int) -> dict[str, list[str]]:
    """The workflow's commands for one IHC slide whose case's H&E results (tiles, scores) are in ``he_out``."""
    py = [sys.executable, "-m", "pipeline"]
    sid = "bench-ihc"
    return {
        **slide_commands(ihc_slide, sid, out, config),
        "register-ihc": py + ["register-ihc", "--he", str(he_slide), "--ihc", str(ihc_slide), "--he-id", "bench",
                              "--ihc-id", sid, "--out", str(out / "registration.json")],
        "quantify-ihc": py + ["quantify-ihc", "--slide", str(ihc_slide), "--slide-id", sid, "--marker", marker,
                              "--tiles", str(out / "tiles.parquet"), "--qc", str(out / "qc.json"),
                              "--config", str(config), "--markers", str(markers),
                              "--registration", str(out / "registration.json"),
                              "--he-tiles", str(he_out / "tiles.parquet"),
                              "--he-scores", str(he_out / "scores.parquet"),
                              "--out-tiles", str(out / "ihc.parquet"), "--out", str(out / "ihc.json"),
                              "--out-cells", str(out / "cells.geojson"), "--threads", str(threads)],
    }


def _outcome(out: Path) -> dict:
    """What the measured run decided: registration status and residual, tiles in the region, cells scored."""
    registration = atomic.read_json(out / "registration.json")
    ihc = atomic.read_json(out / "ihc.json")
    region = ihc.get("region") or {}
    counts = ihc.get("counts") or {}
    return {"registration_status": registration["status"],
            "residual_p95_um": (registration.get("quality") or {}).get("residual_p95_um"),
            "quantify_status": ihc.get("status"), "restricted_to_tumour": region.get("restricted_to_tumour"),
            "tiles": (ihc.get("tiles") or {}).get("quantified"),
            "region_tiles": region.get("tiles"), "cells": counts.get("cells"), "nuclei": counts.get("nuclei"),
            "region_reason": region.get("reason")}


def measure_ihc(ihc_slide: Path, he_slide: Path, he_out: Path, workdir: Path, config: Path, markers: Path,
                marker: str, *, threads: int, repeats: int) -> dict:
    """Prerequisites once, then ``register-ihc`` + ``quantify-ihc`` ``repeats`` times: the median of their sum
    (``seconds_median``, what the target judges), per stage, and each stage's peak RSS."""
    workdir.mkdir(parents=True, exist_ok=True)
    commands = ihc_commands(ihc_slide, he_slide, he_out, workdir, config, markers, marker, threads)
    prerequisites = {s: round(run_stage(commands[s], workdir / f"{s}.log")[0], 2) for s in PREREQUISITES}
    runs, rss = run_stages(commands, IHC_STAGES, workdir, repeats)
    totals = [sum(r.values()) for r in runs]
    return {"marker": marker, "threads": threads, "repeats": len(runs),
            "seconds_median": round(statistics.median(totals), 2), "seconds_runs": [round(t, 2) for t in totals],
            "stage_seconds_median": {s: round(statistics.median(r[s] for r in runs), 2) for s in IHC_STAGES},
            "stage_peak_rss_bytes": rss, "prerequisite_seconds": prerequisites, **_outcome(workdir)}
