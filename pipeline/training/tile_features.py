"""Backbone features of tiles cut from labelled real images, for fitting and validating classification heads.

Public: :func:`tile_set` (records -> tiles, labels, owners), :func:`tap_features` (tiles -> pooled features at
several depths of EfficientNet-Lite0), :func:`cached_taps` (both, cached on disk by recipe).

Training tiles are random crops with scale jitter, flips and rotations (pipeline.training.labelled_images.image_tiles)
and the strong HED stain jitter of Tellez et al. (pipeline.training.train_data.
colour_augment) -- the real sources differ in stain, scanner and (sarcoma) colour normalisation, so colour must
not be what a head learns; grey variants drop colour altogether. Evaluation tiles are a plain grid: no augmentation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from pipeline.he.slide_call import CLASSES
from pipeline.training.labelled_images import LabelledImage, image_tiles, load_rgb

log = logging.getLogger(__name__)


def tile_set(records: list[LabelledImage], target_mpp: float, tile_px: int, n_per_image: int, seed: int | None,
             scale_jitter: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tiles (N, px, px, 3) uint8, class index (N,), owning record index (N,)).

    ``seed`` None: evaluation grid of up to ``n_per_image`` tiles; else ``n_per_image`` random training crops
    per image, the generator seeded by ``seed`` and the record's index (same tiles on every machine).
    """
    tiles, labels, owners = [], [], []
    for i, rec in enumerate(records):
        rng = None if seed is None else np.random.default_rng([seed, i])
        t = image_tiles(load_rgb(rec.path), rec.mpp, target_mpp, tile_px, n_per_image, rng, scale_jitter)
        tiles.append(t)
        labels += [CLASSES.index(rec.label)] * len(t)
        owners += [i] * len(t)
    return np.concatenate(tiles), np.array(labels), np.array(owners)


def imagenet_batch(tiles: np.ndarray, gen: torch.Generator, *, augment: bool, grey: bool) -> torch.Tensor:
    """uint8 RGB tiles (B, H, W, 3) -> ImageNet-normalised float (B, 3, H, W), channels_last: HED colour jitter
    first when ``augment``, grey (mean of R, G, B) when ``grey`` -- as ``TileClassifier`` does for grey models."""
    from pipeline.he.efficientnet_lite import IMAGENET_MEAN, IMAGENET_STD
    from pipeline.training.train_data import colour_augment

    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float()
    if augment:
        x = colour_augment(x, gen, blur_fraction=0.1, grey_fraction=0.05)
    if grey:
        x = x.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def tap_features(net, tiles: np.ndarray, taps: tuple[int, ...], *, augment: bool, grey: bool, seed: int = 0,
                 batch_size: int = 64, bf16: bool = True) -> dict[str, np.ndarray]:
    """Pooled features ``{"b<i>": (N, C_i), "head": (N, 1280)}`` of uint8 RGB tiles through an ImageNet
    EfficientNet-Lite0 ``net`` (pipeline.he.efficientnet_lite) with ImageNet normalisation; HED colour jitter
    first when ``augment``; grey (mean of R, G, B) when ``grey`` -- as ``TileClassifier`` does for grey models."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, list[np.ndarray]] = {}
    for a in range(0, len(tiles), batch_size):
        x = imagenet_batch(tiles[a:a + batch_size], gen, augment=augment, grey=grey)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for k, v in net.forward_taps(x, taps).items():
                out.setdefault(k, []).append(v.float().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def cached_taps(net, records: list[LabelledImage], *, target_mpp: float, tile_px: int, n_per_image: int,
                seed: int | None, grey: bool, taps: tuple[int, ...], cache_dir: str | Path | None,
                scale_jitter: float = 0.25) -> dict[str, np.ndarray]:
    """``{"labels", "owners", "b<i>"..., "head"}`` for ``records`` (training crops with colour jitter when
    ``seed`` is given, else the evaluation grid), kept in ``cache_dir`` keyed by the whole recipe."""
    recipe = json.dumps(["lite0-imagenet", [(str(r.path), r.label, r.mpp) for r in records], target_mpp, tile_px,
                         n_per_image, seed, grey, list(taps), scale_jitter])
    path = None
    if cache_dir:
        path = Path(cache_dir) / f"taps-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.npz"
        if path.is_file():
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
    tiles, labels, owners = tile_set(records, target_mpp, tile_px, n_per_image, seed, scale_jitter)
    log.info("features of %d tiles (%d images, %.2f um/px, %s)", len(tiles), len(records), target_mpp,
             "grey" if grey else "colour")
    result = {"labels": labels, "owners": owners,
              **tap_features(net, tiles, taps, augment=seed is not None, grey=grey, seed=seed or 0)}
    if path is not None:
        from pipeline.atomic import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **result)
    return result
