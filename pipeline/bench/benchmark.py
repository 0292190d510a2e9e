"""``python -m pipeline benchmark``: every stage of the triage measured against its physical bound (the CLI).

For each slide -- generated once and cached (:mod:`pipeline.bench.inputs`), or given with ``--slide`` -- it
measures, with the modules of :mod:`pipeline.bench`:

* **qc + grid**, **reading** vs the libjpeg-turbo **decode bound** and **scoring** vs the model's **compute
  bound**, in this process (:mod:`pipeline.bench.stages`, :mod:`pipeline.bench.readbench`);
* the **baseline** of the common open tools in the same run: OpenSlide ``read_region`` per tile in a torch
  DataLoader with 2 worker processes, fp32, contiguous NCHW, same model -> speed-up of our scoring
  (:mod:`pipeline.bench.baseline`);
* **end to end**: the real stages as the workflow runs them, as subprocesses with the rules' arguments, median
  wall time of ``--repeats`` runs, and each stage's peak RSS (:mod:`pipeline.bench.endtoend`);
* on CUDA, when torch sees a GPU: scoring tiles/s with AMP (never required);
* **IHC** on the generated slides of ``--ihc-sizes`` (60000 x 40000): the slide's IHC serial section
  (:func:`pipeline.bench.inputs.cached_ihc_slide`) registered onto it and quantified, per cell in the tumour
  region, with the end-to-end run's tiles and scores (:mod:`pipeline.bench.ihc`).

Across slides: end-to-end time against tissue area (least-squares line; should be linear) and peak RSS (should
be flat), and the issue's targets (:mod:`pipeline.bench.targets`). Throughputs are best-of-``--repeats`` with each
measurement interleaved with its bound, so a busy neighbour on a shared machine disturbs both alike; the share of
CPU time other processes took during the run is recorded with the figures (:mod:`pipeline.bench.machine`). The
table printed is :func:`pipeline.bench.table.format_table`; ``--json`` writes every figure.

Public: :func:`configure_parser`, :func:`benchmark_slide`, :func:`run`.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from pipeline import atomic
from pipeline.bench.baseline import measure_baseline
from pipeline.bench.endtoend import STAGES, measure_end_to_end
from pipeline.bench.ihc import measure_ihc
from pipeline.bench.inputs import (
    DEFAULT_CACHE,
    DEFAULT_SIZES,
    IHC_MARKER,
    IHC_SIZE,
    QUICK_SIZE,
    SLIDE_MPP,
    bench_model,
    cached_ihc_slide,
    cached_slide,
    parse_sizes,
)
from pipeline.bench.machine import OthersCpu, machine
from pipeline.bench.stages import measure_qc_grid, measure_reader, measure_scoring
from pipeline.bench.table import format_table
from pipeline.bench.targets import check_targets, scaling
from pipeline.errors import TriageError

log = logging.getLogger(__name__)

BENCH_VERSION = 1


def configure_parser(parser) -> None:
    """The verb's options."""
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help=f"generated slides, WIDTHxHEIGHT level-0 px at {SLIDE_MPP} um/px "
                             f"(default {DEFAULT_SIZES})")
    parser.add_argument("--slide", action="append", default=[],
                        help="benchmark this existing slide instead of generated ones (repeatable)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE),
                        help="where generated slides (and an untrained stand-in model) are kept "
                             f"(default {DEFAULT_CACHE})")
    parser.add_argument("--model", default=None,
                        help="model directory (default: the config's model if present, else an untrained small_cnn)")
    parser.add_argument("--architecture", default="small_cnn",
                        help="architecture of the untrained stand-in model when there is no trained one")
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[2] / "configs" / "config.yaml"),
                        help="config whose qc/tiling parameters the stages use (tiling set to the model's scale)")
    parser.add_argument("--threads", type=int, default=2, help="threads per stage, as the workflow's rules (2)")
    parser.add_argument("--batch-size", type=int, default=64, help="tiles per inference batch (64, as the rule)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="end-to-end runs per slide (median) and rounds of each throughput (best)")
    parser.add_argument("--quick", action="store_true",
                        help=f"one small {QUICK_SIZE[0]}x{QUICK_SIZE[1]} slide, one batch, one run (a smoke test)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the OpenSlide + DataLoader baseline")
    parser.add_argument("--ihc-sizes", default=f"{IHC_SIZE[0]}x{IHC_SIZE[1]}",
                        help="generated slides whose IHC serial section is registered and quantified too "
                             f"(default {IHC_SIZE[0]}x{IHC_SIZE[1]}; 'none' for none; never with --quick)")
    parser.add_argument("--ihc-marker", default=IHC_MARKER,
                        help=f"the IHC slide's marker, from the knowledge base (default {IHC_MARKER})")
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")


def benchmark_slide(path: Path, name: str, config: dict, config_path: Path, model_dir: Path, workdir: Path,
                    args, ihc_slide: Path | None = None) -> dict:
    """Every figure of one slide: qc + grid, reader, scoring, baseline, GPU scoring, end to end, and the IHC
    stage when ``ihc_slide`` (its serial section) is given."""
    import torch

    from pipeline.he.models import read_card
    from pipeline.slides.tiling import TileGrid

    card = read_card(model_dir)
    tile_px, target_mpp = int(card["tile_px"]), float(card["mpp"])
    log.info("%s: tissue detection and grid", name)
    qc, grid = measure_qc_grid(path, config, args.repeats)
    result = {"name": name, "path": str(path), "qc": qc}
    if args.quick:
        k = min(len(grid.x), args.batch_size)
        grid = TileGrid(grid.x[:k], grid.y[:k], grid.tissue_fraction[:k], grid.meta)
    if len(grid.x) == 0:
        result["note"] = f"no tiles ({grid.meta.get('reason') or qc['status']})"
        return result
    log.info("%s: reading %d tiles against the decode bound", name, len(grid.x))
    result["reader"] = measure_reader(path, grid.x, grid.y, tile_px, target_mpp, args.batch_size, args.repeats)
    log.info("%s: scoring against the compute bound", name)
    result["scoring"] = measure_scoring(path, grid, model_dir, threads=args.threads, batch_size=args.batch_size,
                                        repeats=args.repeats)
    if not args.no_baseline:
        log.info("%s: baseline (OpenSlide + DataLoader, fp32)", name)
        result["baseline"] = measure_baseline(path, grid, model_dir, threads=args.threads,
                                              batch_size=args.batch_size)
        if result["baseline"].get("tiles_per_s"):
            result["speedup"] = round(result["scoring"]["tiles_per_s"] / result["baseline"]["tiles_per_s"], 2)
    if torch.cuda.is_available():
        log.info("%s: scoring on CUDA", name)
        result["gpu"] = measure_scoring(path, grid, model_dir, threads=args.threads, batch_size=args.batch_size,
                                        repeats=args.repeats, device="cuda")
    log.info("%s: end to end through %s (%d runs)", name, ", ".join(STAGES), args.repeats)
    out = workdir / name
    out.mkdir(parents=True, exist_ok=True)
    result["end_to_end"] = measure_end_to_end(path, out, config_path, model_dir, threads=args.threads,
                                              batch_size=args.batch_size, repeats=args.repeats)
    if ihc_slide is not None:
        log.info("%s: IHC (%s) registered and quantified (%d runs)", name, args.ihc_marker, args.repeats)
        result["ihc"] = measure_ihc(ihc_slide, path, out, workdir / f"{name}-ihc", config_path,
                                    _markers_path(config), args.ihc_marker, threads=args.threads,
                                    repeats=args.repeats)
    return result


def _markers_path(config: dict) -> Path:
    """The marker knowledge base of ``config``, absolute (a relative path is the repository's)."""
    path = Path(config["markers"])
    return path if path.is_absolute() else Path(__file__).resolve().parents[2] / path


def _slides(args, cache_dir: Path) -> list[tuple[Path, str, Path | None]]:
    """(path, name, IHC serial section or None) of the slides to measure: ``--slide`` files, else the generated
    slides of ``--sizes`` (with an IHC section for those of ``--ihc-sizes``)."""
    if args.slide:
        slides = [(Path(p), Path(p).stem, None) for p in args.slide]
        for p, _, _ in slides:
            if not p.is_file():
                raise TriageError(f"--slide {p}: no such file")
        return slides
    sizes = [QUICK_SIZE] if args.quick else parse_sizes(args.sizes)
    ihc_sizes = [] if args.quick or args.ihc_sizes.strip().lower() == "none" else parse_sizes(args.ihc_sizes)
    return [(cached_slide(cache_dir, w, h), f"{w}x{h}",
             cached_ihc_slide(cache_dir, w, h, marker=args.ihc_marker) if (w, h) in ihc_sizes else None)
            for w, h in sizes]


def run(args) -> None:
    """The verb: measure every slide, print the table, write every figure to ``--json`` if given."""
    from pipeline.config import load_config
    from pipeline.he.models import read_card

    if args.threads < 1 or args.batch_size < 1 or args.repeats < 1:
        raise TriageError("--threads, --batch-size and --repeats must be >= 1")
    if args.quick:
        args.repeats = 1
    cache_dir = Path(args.cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    slides = _slides(args, cache_dir)
    model_dir, model_text, trained = bench_model(args.model, cache_dir, args.architecture)
    if not trained:
        log.warning("model: %s", model_text)
    card = read_card(model_dir)
    config = load_config(args.config)
    config["tiling"].update(target_mpp=float(card["mpp"]), tile_px=int(card["tile_px"]))
    report = {"bench_version": BENCH_VERSION, "argv": sys.argv[1:], "machine": machine(),
              "load_average_before": list(os.getloadavg()), "model": model_text, "model_trained": trained,
              "model_dir": str(model_dir), "threads": args.threads, "batch_size": args.batch_size,
              "repeats": args.repeats, "quick": args.quick, "slides": []}
    with tempfile.TemporaryDirectory(prefix="slide-triage-bench-") as tmp:
        workdir = Path(tmp)
        config_path = workdir / "config.yaml"
        atomic.write_json(config_path, config)  # JSON is YAML
        others = OthersCpu()
        for path, name, ihc_slide in slides:
            slide_others = OthersCpu()
            report["slides"].append(benchmark_slide(path, name, config, config_path, model_dir, workdir, args,
                                                    ihc_slide))
            report["slides"][-1]["others_cpu_percent"] = slide_others.percent()
    report["others_cpu_percent"] = others.percent()
    report["load_average_after"] = list(os.getloadavg())
    report["scaling"] = scaling(report["slides"])
    report["targets"] = check_targets(report["slides"])
    print(format_table(report))
    if args.json:
        atomic.write_json(args.json, report)
