"""What the benchmark measures on: the slides (generated once and cached, or given) and the model.

Slides come from :func:`pipeline.synth.slide_writer.write_slide` (Aperio-style SVS, JPEG tiles, 4x pyramid,
0.25 um/px, ~40 % tissue), cached outside the repository. The model is ``--model``, else the config's default
model, else an untrained stand-in written once into the cache (same speed, meaningless scores).

The IHC stage's slide (:func:`cached_ihc_slide`) is the serial section of a generated H&E slide: the same layout
and cells stained for ``IHC_MARKER``, placed on its glass under a seeded rigid transform (turned, perhaps
mirrored, shifted), as the sample cohort's IHC slides are.

Public: :func:`parse_sizes`, :func:`cached_slide`, :func:`cached_ihc_slide`, :func:`bench_model`,
:func:`write_untrained_model`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from pipeline import atomic
from pipeline.errors import TriageError

log = logging.getLogger(__name__)

DEFAULT_SIZES = "20000x20000,60000x40000,100000x100000"
QUICK_SIZE = (8192, 6144)  # ~20 tissue tiles of 224 px at 1 um/px: one batch
SLIDE_MPP = 0.25  # a 40x scan
TISSUE_FRACTION = 0.4
DEFAULT_CACHE = Path("~/.cache/slide-triage/bench")
IHC_MARKER = "Ki67"  # nuclear: every tile's nuclei are found, and the region's cells scored (the heavier case)
IHC_SIZE = (60000, 40000)  # the size the IHC target is set for (issue 14)


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
    """The generated benchmark slide of this size, written by pipeline.synth.slide_writer the first time it is
    asked for."""
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


def cached_ihc_slide(cache_dir: Path, width: int, height: int, seed: int = 0, marker: str = IHC_MARKER) -> Path:
    """The generated IHC serial section of :func:`cached_slide`'s slide of this size and seed (same layout
    seed, stained for ``marker``, seeded placement on the glass), written the first time it is asked for."""
    from pipeline.synth.slide_writer import write_slide
    from pipeline.synth.version import VERSION

    path = cache_dir / f"bench-{width}x{height}-mpp{SLIDE_MPP}-seed{seed}-{marker}-synth{VERSION}.svs"
    if not path.is_file():
        log.info("generating %s (once; cached in %s)", path.name, cache_dir)
        t0 = time.perf_counter()
        write_slide(path, width=width, height=height, mpp=SLIDE_MPP, seed=seed + 1, stain=marker, layout="mixed",
                    layout_seed=seed, fmt="svs", tissue_fraction=TISSUE_FRACTION, placement_seed=seed + 1,
                    he_slide=f"bench-{width}x{height}", workers=max(1, min(4, os.cpu_count() or 1)))
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

    from pipeline.he.models import INTENDED_USE, TileClassifier, save_weights
    from pipeline.he.slide_call import CLASSES

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
