"""``python -m pipeline benchmark``: every stage of the triage measured against its physical bound.

For each slide -- generated once by :func:`pipeline.synth.slide_writer.write_slide` (Aperio-style SVS, JPEG tiles, 4x
pyramid, 0.25 um/px, ~40 % tissue) and cached outside the repository, or given with ``--slide`` -- it measures:

* **qc + grid**: tissue detection (:func:`pipeline.slides.qc.qc_slide`) and the tile grid
  (:func:`pipeline.slides.tiling.grid_for_slide`), in this process;
* **reading** vs the **decode bound**: the grid's tiles through ``Slide.read_tiles`` on one thread (cold
  cache) against libjpeg-turbo decoding, once each, the JPEG tiles those tiles need, bytes already in memory
  (:mod:`pipeline.bench.readbench`);
* **scoring** vs the **compute bound**: :func:`pipeline.he.scoring.score_tiles` as ``score-tiles`` runs it
  against the same model's forward pass (normalisation, backbone, head, OOD) on random tiles, same batches,
  threads, precision and memory format -- reading and the hand-over cost what scoring loses;
* the **baseline** of the common open tools in the same run: OpenSlide ``read_region`` per tile in a torch
  DataLoader with 2 worker processes, fp32, contiguous NCHW, same model -> speed-up of our scoring;
* **end to end**: the real stages as the workflow runs them (``qc-slide``, ``tile-slide``, ``score-tiles``,
  ``summarize-slide`` as subprocesses with the rules' arguments), median wall time of ``--repeats`` runs, and
  each stage's peak RSS (``wait4``);
* on CUDA, when torch sees a GPU: scoring tiles/s with AMP (never required).

Across slides: end-to-end time against tissue area (least-squares line; should be linear) and peak RSS
(should be flat). Throughputs are best-of-``--repeats`` with each measurement interleaved with its bound, so
a busy neighbour on a shared machine disturbs both alike; the share of CPU time other processes took during
the run is recorded with the figures.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline import atomic
from pipeline.errors import TriageError

log = logging.getLogger(__name__)

BENCH_VERSION = 1
DEFAULT_SIZES = "20000x20000,60000x40000,100000x100000"
QUICK_SIZE = (8192, 6144)  # ~20 tissue tiles of 224 px at 1 um/px: one batch
SLIDE_MPP = 0.25  # a 40x scan
TISSUE_FRACTION = 0.4
DEFAULT_CACHE = Path("~/.cache/slide-triage/bench")
STAGES = ("qc-slide", "tile-slide", "score-tiles", "summarize-slide")
BASELINE_WORKERS = 2
# The issue's targets (issue 7): end to end on the 60000 x 40000 slide, ratios to the bounds, RSS on 100k^2.
TARGET_E2E_S, TARGET_E2E_SIZE = 30.0, (60000, 40000)
TARGET_READ_RATIO, TARGET_SCORE_RATIO = 0.8, 0.8
TARGET_RSS_BYTES, TARGET_RSS_SIZE = 2 << 30, (100000, 100000)


# ---- slides and model ----------------------------------------------------------------------------------
def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"20000x20000,60000x40000"`` -> [(20000, 20000), (60000, 40000)] (width x height, level-0 px)."""
    sizes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            w, h = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise TriageError(f"--sizes: {item!r} is not WIDTHxHEIGHT (e.g. 60000x40000)") from None
        if w < 1024 or h < 1024:
            raise TriageError(f"--sizes: {item} is too small (at least 1024 px a side)")
        sizes.append((w, h))
    if not sizes:
        raise TriageError("--sizes: no size given")
    return sizes


def cached_slide(cache_dir: Path, width: int, height: int, seed: int = 0) -> Path:
    """The generated benchmark slide of this size, written by pipeline.synth the first time it is asked for."""
    from pipeline.synth.slide_writer import write_slide
    from pipeline.synth.version import VERSION

    path = cache_dir / f"bench-{width}x{height}-mpp{SLIDE_MPP}-seed{seed}-synth{VERSION}.svs"
    if not path.is_file():
        log.info("generating %s (once; cached in %s)", path.name, cache_dir)
        t0 = time.perf_counter()
        write_slide(path, width=width, height=height, mpp=SLIDE_MPP, seed=seed, stain="HE", layout="mixed",
                    fmt="svs", tissue_fraction=TISSUE_FRACTION, workers=max(1, min(4, os.cpu_count() or 1)))
        log.info("generated %s in %.0f s", path.name, time.perf_counter() - t0)
    return path


def bench_model(model_dir: str | None, cache_dir: Path, architecture: str) -> tuple[Path, str, bool]:
    """(model directory, description, trained?): ``--model``, else the config's default model if it is
    there, else an untrained ``architecture`` written once into the cache (same speed, meaningless scores)."""
    from pipeline.config import load_schema

    root = Path(__file__).resolve().parents[2]
    if model_dir:
        path = Path(model_dir)
        if not (path / "card.json").is_file():
            raise TriageError(f"--model {model_dir}: no card.json there; pass models/<model_id>")
        return path, f"{path.name} (--model)", True
    default = root / load_schema("config")["properties"]["model"]["default"]
    if (default / "card.json").is_file():
        return default, f"{default.name} (the config's default model)", True
    path = cache_dir / f"untrained-{architecture}"
    if not (path / "card.json").is_file():
        write_untrained_model(path, architecture)
    return path, (f"UNTRAINED {architecture} (no shipped model at {default.relative_to(root)}; speed only, "
                  "scores meaningless)"), False


def write_untrained_model(directory: Path, architecture: str = "small_cnn") -> Path:
    """A random-weight classifier with a valid card, for measuring speed without a trained model."""
    import torch

    from pipeline.he.models import CLASSES, INTENDED_USE, TileClassifier, save_weights

    torch.manual_seed(0)
    model = TileClassifier(architecture, len(CLASSES))
    sha = save_weights(model, directory / "weights.pt")
    card = {
        "card_version": 1, "model_id": f"untrained-{architecture}".replace("_", "-"), "architecture": architecture,
        "classes": list(CLASSES), "tile_px": 224, "mpp": 1.0,
        "normalisation": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "calibration": {"method": "none", "temperature": 1.0},
        "precision": {"bf16_allowed": True, "bf16_max_prob_diff": 0.0},
        "weights": {"file": "weights.pt", "sha256": sha}, "intended_use": INTENDED_USE,
        "training_data": {"note": "untrained: benchmark stand-in"}, "test_data": {}, "metrics": {},
        "performance": {"tiles_per_s": 0.0},
    }
    atomic.write_json(directory / "card.json", card)
    return directory


# ---- in-process stages ---------------------------------------------------------------------------------
def _best_of(repeats: int, *fns) -> list[float]:
    """Shortest wall time of each function over ``repeats`` interleaved rounds."""
    best = [math.inf] * len(fns)
    for _ in range(max(1, repeats)):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def measure_qc_grid(path: Path, config: dict, repeats: int):
    """Seconds for tissue detection + grid (opening included); returns (figures, grid)."""
    from pipeline.slides.qc import qc_slide
    from pipeline.slides.reader import open_slide
    from pipeline.slides.tiling import grid_for_slide

    result = {}

    def once():
        with open_slide(path) as slide:
            record, _, mask = qc_slide(slide, config)
            t1 = time.perf_counter()
            result["grid"] = grid_for_slide(slide, mask, record["thumb_mpp"], config["tiling"], path.stem)
            result["grid_s"] = min(result.get("grid_s", math.inf), time.perf_counter() - t1)
        result["record"] = record

    (seconds,) = _best_of(repeats, once)
    record, grid = result["record"], result["grid"]
    figures = {"seconds": round(seconds, 3), "grid_seconds": round(result["grid_s"], 4), "status": record["status"],
               "tissue_area_mm2": record["metrics"].get("tissue_area_mm2", 0.0), "n_tiles": len(grid.x),
               "level": grid.meta.get("level"), "width_px": record["slide"]["width_px"] if record["slide"] else None,
               "height_px": record["slide"]["height_px"] if record["slide"] else None}
    return figures, grid


def measure_reader(path: Path, xs, ys, tile_px: int, target_mpp: float, batch_size: int, repeats: int) -> dict:
    """Our reader (one thread, cold cache, batches as scoring reads them) against the JPEG decode bound."""
    from pipeline.bench import readbench
    from pipeline.slides.reader import TiffSlide, open_slide

    with open_slide(path) as slide:
        level = slide.tile_geometry(tile_px, target_mpp)[0]
        if not isinstance(slide, TiffSlide) or slide._jpeg[level] is None:
            return {"reader": type(slide).__name__, "note": "not a JPEG-tiled TIFF: no decode bound"}
        blobs, args = readbench.jpeg_segments(slide, xs, ys, tile_px, target_mpp)
        bound_s, batched_s, single_s = _best_of(
            repeats, lambda: readbench.decode_all(blobs, args),
            lambda: readbench.read_all(slide, xs, ys, tile_px, target_mpp, batch_size),
            lambda: readbench.read_all(slide, xs, ys, tile_px, target_mpp, None))
    n = len(xs)
    return {"reader": "TiffSlide", "tiles": n, "segments": len(blobs), "segments_per_tile": round(len(blobs) / n, 3),
            "tiles_per_s": round(n / batched_s, 1), "read_tile_tiles_per_s": round(n / single_s, 1),
            "decode_bound_tiles_per_s": round(n / bound_s, 1), "ratio": round(bound_s / batched_s, 3)}


def _load(model_dir: Path, device: str, channels_last: bool):
    import torch

    from pipeline.he.models import load_model

    model, card = load_model(model_dir, device)
    return (model.to(memory_format=torch.channels_last) if channels_last else model), card


def compute_bound(model, card: dict, n: int, batch_size: int, device: str, precision: str) -> float:
    """Seconds for the model's forward pass (``TileClassifier.score``: normalisation, backbone, head, OOD) over
    ``n`` random uint8 tiles in batches, as score_tiles runs it, without reading (tiles already in memory)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    tile_px = int(card["tile_px"])
    host = torch.randint(0, 256, (batch_size, tile_px, tile_px, 3), dtype=torch.uint8)
    x = host.to(device)
    t0 = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        for a in range(0, n, batch_size):
            p, o = model.score(x[: min(batch_size, n - a)].permute(0, 3, 1, 2))
            p.float().cpu(), o.float().cpu()  # as score_tiles: results back on the host each batch
    return time.perf_counter() - t0


def measure_scoring(path: Path, grid, model_dir: Path, *, threads: int, batch_size: int, repeats: int,
                    device: str = "cpu") -> dict:
    """score_tiles (as the score-tiles verb runs it) against the compute bound, interleaved, best of each."""
    import torch

    from pipeline.he.scoring import pick_precision, score_tiles

    torch.set_num_threads(threads)
    model, card = _load(model_dir, device, channels_last=True)
    precision = pick_precision("auto", card, device)
    n = len(grid.x)
    meta = {}

    def ours():
        _, m = score_tiles(path, grid, model, card, batch_size=batch_size, threads=threads, device=device,
                           precision=precision)
        meta.update(m)

    warm = min(n, batch_size)
    compute_bound(model, card, warm, batch_size, device, precision)  # oneDNN / cuDNN kernel selection
    cpu0 = time.process_time()
    bound_s, ours_s = _best_of(repeats, lambda: compute_bound(model, card, n, batch_size, device, precision), ours)
    return {"device": device, "precision": precision, "threads": threads, "batch_size": batch_size,
            "readers": meta.get("readers"), "prefetch": meta.get("prefetch"), "tiles": n,
            "tiles_per_s": round(n / ours_s, 1), "compute_bound_tiles_per_s": round(n / bound_s, 1),
            "ratio": round(bound_s / ours_s, 3),
            "cpu_seconds_both": round(time.process_time() - cpu0, 2)}


# ---- the baseline: what the common open tools do ---------------------------------------------------------
class _OpenSlideTiles:
    """Map-style dataset: one OpenSlide ``read_region`` per tile, RGBA -> RGB float CHW (ToTensor-like, 0-255)."""

    def __init__(self, path: Path, xs, ys, level: int, region_px: int):
        self.path, self.xs, self.ys, self.level, self.size = str(path), xs, ys, level, region_px
        self.osr = None

    def __len__(self) -> int:
        return len(self.xs)

    def __getitem__(self, i: int):
        import openslide
        import torch

        if self.osr is None:  # opened in the worker process
            self.osr = openslide.OpenSlide(self.path)
        region = self.osr.read_region((int(self.xs[i]), int(self.ys[i])), self.level, (self.size, self.size))
        rgb = np.array(region.convert("RGB"))
        return torch.from_numpy(rgb).permute(2, 0, 1).float()


def measure_baseline(path: Path, grid, model_dir: Path, *, threads: int, batch_size: int,
                     workers: int = BASELINE_WORKERS) -> dict:
    """OpenSlide read_region per tile in a DataLoader (``workers`` processes), fp32, contiguous NCHW."""
    import torch
    import torch.utils.data as tud

    from pipeline.slides.reader import open_slide

    torch.set_num_threads(threads)
    model, card = _load(model_dir, "cpu", channels_last=False)
    with open_slide(path, reader="openslide") as slide:
        level, region_px, _ = slide.tile_geometry(int(card["tile_px"]), float(card["mpp"]))
    if region_px != int(card["tile_px"]):
        return {"note": f"no level at {card['mpp']} um/px: the baseline would resize; skipped"}
    loader = tud.DataLoader(_OpenSlideTiles(path, grid.x, grid.y, level, region_px), batch_size=batch_size,
                            num_workers=workers, shuffle=False)
    n = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in loader:
            model.score(batch)
            n += len(batch)
    seconds = time.perf_counter() - t0
    return {"method": f"OpenSlide read_region per tile, DataLoader {workers} workers, fp32, NCHW",
            "tiles": n, "tiles_per_s": round(n / seconds, 1), "seconds": round(seconds, 2)}


# ---- end to end through the real stages ------------------------------------------------------------------
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


def _run_stage(cmd: list[str], log_path: Path) -> tuple[float, int]:
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


def stage_commands(slide: Path, out: Path, config: Path, model_dir: Path, threads: int,
                   batch_size: int) -> dict[str, list[str]]:
    """The workflow's per-slide H&E commands (pipeline/rules/slides.smk, he.smk, outputs.smk)."""
    py = [sys.executable, "-m", "pipeline"]
    sid = "bench"
    return {
        "qc-slide": py + ["qc-slide", "--slide", str(slide), "--slide-id", sid, "--config", str(config),
                          "--out", str(out / "qc.json"), "--thumb", str(out / "thumb.png"),
                          "--mask", str(out / "tissue.png")],
        "tile-slide": py + ["tile-slide", "--slide", str(slide), "--slide-id", sid, "--config", str(config),
                            "--qc", str(out / "qc.json"), "--mask", str(out / "tissue.png"),
                            "--out", str(out / "tiles.parquet")],
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


def measure_end_to_end(slide: Path, workdir: Path, config: Path, model_dir: Path, *, threads: int,
                       batch_size: int, repeats: int) -> dict:
    """Median wall time of the four stages run one after the other, per stage and in all; peak RSS per stage."""
    commands = stage_commands(slide, workdir, config, model_dir, threads, batch_size)
    runs, rss = [], dict.fromkeys(STAGES, 0)
    for _ in range(max(1, repeats)):
        times = {}
        for stage in STAGES:
            times[stage], peak = _run_stage(commands[stage], workdir / f"{stage}.log")
            rss[stage] = max(rss[stage], peak)
        runs.append(times)
    totals = [sum(r.values()) for r in runs]
    from pipeline.he.scoring import read_scores

    scores_meta = read_scores(workdir / "scores.parquet")[1]
    return {"repeats": len(runs), "seconds_median": round(statistics.median(totals), 2),
            "seconds_runs": [round(t, 2) for t in totals],
            "stage_seconds_median": {s: round(statistics.median(r[s] for r in runs), 2) for s in STAGES},
            "peak_rss_bytes": max(rss.values()), "stage_peak_rss_bytes": rss,
            "scoring": {k: scores_meta.get(k) for k in ("device", "precision", "readers", "prefetch", "tiles_per_s",
                                                         "status", "n_tiles")}}


# ---- across slides ---------------------------------------------------------------------------------------
def linear_fit(xs: list[float], ys: list[float]) -> dict | None:
    """Least-squares ``y = intercept + slope * x`` with R^2; None for fewer than two distinct x."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    pred = intercept + slope * np.asarray(xs, float)
    ss_res = float(((np.asarray(ys) - pred) ** 2).sum())
    ss_tot = float(((np.asarray(ys) - np.mean(ys)) ** 2).sum())
    return {"slope": float(slope), "intercept": float(intercept),
            "r2": round(1.0 - ss_res / ss_tot, 4) if ss_tot > 0 else 1.0}


def scaling(slides: list[dict]) -> dict:
    """End-to-end seconds against tissue area and tile count; peak RSS spread (max / min)."""
    done = [s for s in slides if "end_to_end" in s]
    area = [s["qc"]["tissue_area_mm2"] for s in done]
    seconds = [s["end_to_end"]["seconds_median"] for s in done]
    fit = linear_fit(area, seconds)
    rss = [s["end_to_end"]["peak_rss_bytes"] for s in done]
    out = {"seconds_vs_tissue_mm2": None, "peak_rss_max_over_min": round(max(rss) / min(rss), 3) if rss else None}
    if fit:
        out["seconds_vs_tissue_mm2"] = {"seconds_per_mm2": round(fit["slope"], 4),
                                        "fixed_seconds": round(fit["intercept"], 2), "r2": fit["r2"]}
    return out


def check_targets(slides: list[dict]) -> list[dict]:
    """The issue's targets against the measured figures (only those this run measured)."""
    targets = []
    for s in slides:
        size = (s["qc"].get("width_px"), s["qc"].get("height_px"))
        e2e = s.get("end_to_end")
        if e2e and size == TARGET_E2E_SIZE:
            targets.append({"target": f"end to end {size[0]}x{size[1]} <= {TARGET_E2E_S:g} s (median)",
                            "measured": e2e["seconds_median"], "met": e2e["seconds_median"] <= TARGET_E2E_S})
        if e2e and size == TARGET_RSS_SIZE:
            targets.append({"target": f"peak RSS {size[0]}x{size[1]} < 2 GiB",
                            "measured": round(e2e["peak_rss_bytes"] / 2**30, 3),
                            "met": e2e["peak_rss_bytes"] < TARGET_RSS_BYTES})
    for key, name, goal in (("reader", "reading / decode bound", TARGET_READ_RATIO),
                            ("scoring", "scoring / compute bound", TARGET_SCORE_RATIO)):
        ratios = [s[key]["ratio"] for s in slides if "ratio" in s.get(key, {})]
        if ratios:
            targets.append({"target": f"{name} >= {goal:.0%} (worst slide)", "measured": min(ratios),
                            "met": min(ratios) >= goal})
    return targets


# ---- report ----------------------------------------------------------------------------------------------
class OthersCpu:
    """Share of the machine's CPU time used by *other* processes between two points (Linux /proc/stat minus
    this process and its waited-for children): how much a shared machine disturbed the figures."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        import resource

        try:
            with open("/proc/stat", encoding="ascii") as fh:
                fields = [int(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        busy, total = sum(fields[:3]) + sum(fields[5:8]), sum(fields[:8])  # user nice system, irq softirq steal
        mine = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))
        return busy / tick, total / tick, mine

    def percent(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None or end[1] <= self.start[1]:
            return None
        busy, total, mine = (b - a for a, b in zip(self.start, end, strict=True))
        return round(100 * max(0.0, busy - mine) / total, 1)


def machine() -> dict:

    import torch

    from pipeline.he.scoring import _cpu_has_bf16, available_cpus
    from pipeline.outputs.provenance import git_commit

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": available_cpus(), "cpu_bf16": _cpu_has_bf16(), "gpu": gpu,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__, "git_commit": git_commit()}


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def format_table(report: dict) -> str:
    """The figures as a plain-text table (the same as docs/benchmark.md's)."""
    m = report["machine"]
    others = report.get("others_cpu_percent")
    lines = [f"slide-triage benchmark  ({m['cores']} cores: {m['cpu']}; GPU: {m['gpu'] or 'none'}; other processes "
             f"used {'?' if others is None else others}% of the CPU during the run)",
             f"model: {report['model']}; {report['threads']} threads, batch {report['batch_size']}", ""]
    head = ("slide", "tissue mm2", "tiles", "qc+grid s", "read t/s", "decode t/s", "read %", "score t/s",
            "compute t/s", "score %", "baseline t/s", "speed-up", "e2e s (median)", "peak RSS MiB", "GPU t/s")
    rows = []
    for s in report["slides"]:
        r, sc, b, e = s.get("reader", {}), s.get("scoring", {}), s.get("baseline", {}), s.get("end_to_end", {})
        rows.append((s["name"], f"{s['qc']['tissue_area_mm2']:.1f}", str(s["qc"]["n_tiles"]),
                     f"{s['qc']['seconds']:.2f}", f"{r.get('tiles_per_s', 0):,.0f}",
                     f"{r.get('decode_bound_tiles_per_s', 0):,.0f}",
                     f"{100 * r['ratio']:.0f}" if "ratio" in r else "-", f"{sc.get('tiles_per_s', 0):,.0f}",
                     f"{sc.get('compute_bound_tiles_per_s', 0):,.0f}",
                     f"{100 * sc['ratio']:.0f}" if "ratio" in sc else "-", f"{b.get('tiles_per_s', 0):,.0f}",
                     f"{s['speedup']:.1f}x" if s.get("speedup") else "-",
                     f"{e['seconds_median']:.1f}" if e else "-", _mib(e["peak_rss_bytes"]) if e else "-",
                     f"{s['gpu']['tiles_per_s']:,.0f}" if s.get("gpu") else "-"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)] if rows else [len(h) for h in head]
    lines.append("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    for s in report["slides"]:
        e = s.get("end_to_end")
        if e:
            stages = ", ".join(f"{k} {v:.1f} s / {_mib(e['stage_peak_rss_bytes'][k])} MiB"
                               for k, v in e["stage_seconds_median"].items())
            lines.append(f"{s['name']}: {stages} (other processes: {s.get('others_cpu_percent', '?')}% CPU)")
    sc = report["scaling"]
    if sc.get("seconds_vs_tissue_mm2"):
        f = sc["seconds_vs_tissue_mm2"]
        lines.append(f"end to end = {f['fixed_seconds']:.1f} s + {f['seconds_per_mm2']:.3f} s/mm2 of tissue "
                     f"(R^2 {f['r2']:.3f}); peak RSS max/min {sc['peak_rss_max_over_min']:.2f}")
    lines.append("")
    for t in report["targets"]:
        lines.append(f"{'MET ' if t['met'] else 'MISSED'} {t['target']}: measured {t['measured']}")
    return "\n".join(lines)


# ---- CLI ---------------------------------------------------------------------------------------------------
def configure_parser(parser) -> None:
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
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")


def benchmark_slide(path: Path, name: str, config: dict, config_path: Path, model_dir: Path, workdir: Path,
                    args) -> dict:
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
    return result


def run(args) -> None:

    from pipeline.config import load_config

    if args.threads < 1 or args.batch_size < 1 or args.repeats < 1:
        raise TriageError("--threads, --batch-size and --repeats must be >= 1")
    if args.quick:
        args.repeats = 1
    cache_dir = Path(args.cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    if args.slide:
        slides = [(Path(p), Path(p).stem) for p in args.slide]
        for p, _ in slides:
            if not p.is_file():
                raise TriageError(f"--slide {p}: no such file")
    else:
        sizes = [QUICK_SIZE] if args.quick else parse_sizes(args.sizes)
        slides = [(cached_slide(cache_dir, w, h), f"{w}x{h}") for w, h in sizes]
    model_dir, model_text, trained = bench_model(args.model, cache_dir, args.architecture)
    if not trained:
        log.warning("model: %s", model_text)
    from pipeline.he.models import read_card

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
        for path, name in slides:
            slide_others = OthersCpu()
            report["slides"].append(benchmark_slide(path, name, config, config_path, model_dir, workdir, args))
            report["slides"][-1]["others_cpu_percent"] = slide_others.percent()
    report["others_cpu_percent"] = others.percent()
    report["load_average_after"] = list(os.getloadavg())
    report["scaling"] = scaling(report["slides"])
    report["targets"] = check_targets(report["slides"])
    print(format_table(report))
    if args.json:
        atomic.write_json(args.json, report)
