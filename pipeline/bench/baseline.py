"""The baseline of the common open tools: OpenSlide ``read_region`` per tile in a torch DataLoader.

Two worker processes, fp32, contiguous NCHW, the same model as ours: the speed-up of our scoring is measured
against this.

Public: :func:`measure_baseline`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.bench.stages import load_model_as

BASELINE_WORKERS = 2


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
    model, card = load_model_as(model_dir, "cpu", channels_last=False)
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
