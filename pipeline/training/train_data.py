"""Training patches for the tile classifier: where they come from, how they are split, how they are augmented.

Sources (all resampled to the model's um/px with the patch's own um/px):

* labelled patch folders -- ``<class>/<image>`` plus a labels CSV (``path``, ``coarse_label``, ``mpp_um``,
  ``dataset``), as ../shared/data/patches. Rows without ``mpp_um`` need an explicit ``--assume-mpp`` for their
  dataset; nothing is guessed silently.
* synthetic H&E patches from :func:`pipeline.synth.render.render_patch` (a fresh seed per patch).
* procedural tissue textures (pipeline/training/train_textures.py): each class's morphology under random stain colours.
* annotated slides: QuPath GeoJSON polygons with a classification name, cut into tiles.

Splits are by case, slide, source or synthetic seed -- never by tile -- so no piece of tissue is in two splits.
Augmentation (numpy/torch, per batch): random crop and scale jitter, flips and 90-degree rotations, stain
jitter in HED space (Tellez et al., 2018), brightness/contrast and Gaussian blur.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import atomic
from pipeline.errors import TriageError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
# coarse labels of patch folders -> model classes (necrosis: no viable tumour in the tile)
LABEL_MAP = {"carcinoma": "carcinoma", "sarcoma": "sarcoma", "non_tumour": "non_tumour", "necrosis": "non_tumour"}


@dataclass
class Patch:
    """One training image at the model's um/px, with its class and provenance."""

    image: np.ndarray  # (h, w, 3) uint8 RGB, h and w >= tile_px after preparation
    label: int
    source: str  # data source, the unit of per-source metrics
    group: str  # case / slide / synthetic seed: the unit of splitting
    split: str  # train | val | test
    origin: str  # file path or synthetic recipe


# ---- splitting --------------------------------------------------------------------------------------------
def hashed_split(group: str, val_fraction: float = 0.15, test_fraction: float = 0.15) -> str:
    """Deterministic split of a group name (same group -> same split on every machine)."""
    u = int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


# Rules for the reference patches in ../shared/data/patches (first match on the relative path wins):
# (pattern, source, group pattern (first capture group names the case/slide) or None = whole source, split).
# Held out for testing: two carcinoma sources never seen in training (TCGA CHOL/COAD tiles; NCT-CRC-HE-100K, a
# patient cohort disjoint from CRC-VAL-HE-7K) and two whole osteosarcoma cases: P9, and case 48 -- the only case
# with viable tumour, so every real sarcoma patch is a test patch. Training on it would teach "this centre's pink
# tissue = sarcoma" (one case, one scanner, one organ); the model learns sarcoma morphology from generated tissue
# and the real sarcoma patches measure whether that transfers.
SHARED_PATCH_RULES: tuple[tuple[str, str, str | None, str], ...] = (
    (r"mopadi__0_0_", "tcga-chol-komura", None, "test"),
    (r"mopadi__Tile_", "tcga-coad-msi", None, "test"),
    (r"tiatoolbox__kather", "nct-crc-he-100k", None, "test"),
    (r"osteosarcoma__(P9|Case-48)-", "osteosarcoma-utsw", r"osteosarcoma__(P9|Case-48)-", "test"),
    (r"osteosarcoma__Case-3-A[78]-", "osteosarcoma-utsw", r"osteosarcoma__(Case-3-A\d+)-", "val"),
    (r"osteosarcoma__", "osteosarcoma-utsw", r"osteosarcoma__(Case-\d+-[A-Z0-9]+)-", "train"),
    (r"(kather__|mopadi__CRC-VAL-HE-7K)", "kather-crc-val-he-7k", None, "train"),
)


def rule_split(rel_path: str, dataset: str, rules=SHARED_PATCH_RULES) -> tuple[str, str, str]:
    """(source, group, split) of a labelled patch: the first matching rule, else hashed by file stem."""
    for pattern, source, group_pattern, split in rules:
        if re.search(pattern, rel_path):
            m = re.search(group_pattern, rel_path) if group_pattern else None
            return source, (m.group(1) if m else source), split
    source = re.sub(r"[^a-z0-9]+", "-", dataset.lower()).strip("-")[:40] or "unknown"
    group = Path(rel_path).stem
    return source, group, hashed_split(group)


# ---- resampling -------------------------------------------------------------------------------------------
def resample(image: np.ndarray, image_mpp: float, target_mpp: float) -> np.ndarray:
    """Rescale an RGB image from ``image_mpp`` to ``target_mpp`` um/px (box filter down, bicubic up)."""
    from pipeline.training.labelled_images import rescale

    return rescale(image, image_mpp / target_mpp)


def mosaic(images: list[np.ndarray], size_px: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size_px`` square tiled from smaller images of one class and source (random order and flips)."""
    out = np.empty((size_px, size_px, 3), np.uint8)
    y = 0
    while y < size_px:
        x, row_h = 0, size_px
        while x < size_px:
            img = images[rng.integers(len(images))]
            if rng.random() < 0.5:
                img = img[:, ::-1]
            h, w = min(img.shape[0], size_px - y), min(img.shape[1], size_px - x)
            out[y:y + h, x:x + w] = img[:h, :w]
            row_h, x = min(row_h, h), x + w
        y += row_h
    return out


def load_patch_folder(root: str | Path, labels_csv: str | Path, classes: list[str], target_mpp: float,
                      assume_mpp: dict[str, float] | None = None, rules=SHARED_PATCH_RULES) -> list[Patch]:
    """Labelled patches from ``root`` (``<class>/<image>``) with their labels CSV, at ``target_mpp``.

    ``assume_mpp`` maps a substring of the CSV's ``dataset`` to the um/px of rows that have none; rows still
    without a scale are skipped with a warning.
    """
    from PIL import Image

    from pipeline.training.labelled_images import read_csv_rows

    root = Path(root)
    rows = read_csv_rows(labels_csv)
    needed = {"path", "coarse_label"}
    if rows and not needed <= set(rows[0]):
        raise TriageError(f"{labels_csv}: needs columns path, coarse_label (and mpp_um, dataset)")
    patches, skipped = [], {}
    for row in rows:
        cls = LABEL_MAP.get(row["coarse_label"], row["coarse_label"])
        if cls not in classes:
            skipped[f"class {row['coarse_label']}"] = skipped.get(f"class {row['coarse_label']}", 0) + 1
            continue
        dataset = row.get("dataset", "")
        mpp = float(row["mpp_um"]) if row.get("mpp_um") else None
        if mpp is None:
            mpp = next((v for k, v in (assume_mpp or {}).items() if k.lower() in dataset.lower()), None)
        if mpp is None:
            skipped[f"no mpp: {dataset[:40]}"] = skipped.get(f"no mpp: {dataset[:40]}", 0) + 1
            continue
        image = np.asarray(Image.open(root / row["path"]).convert("RGB"))
        source, group, split = rule_split(row["path"], dataset, rules)
        patches.append(Patch(resample(image, mpp, target_mpp), classes.index(cls), source, group, split,
                             f"{root.name}/{row['path']}"))
    for what, n in skipped.items():
        log.warning("%s: skipped %d rows (%s)", labels_csv, n, what)
    return patches


def pad_small_patches(patches: list[Patch], tile_px: int, seed: int = 0) -> list[Patch]:
    """Patches smaller than ``tile_px`` become mosaics of patches of the same class, source and split."""
    rng = np.random.default_rng(seed)
    pools: dict[tuple, list[np.ndarray]] = {}
    for p in patches:
        if min(p.image.shape[:2]) < tile_px:
            pools.setdefault((p.label, p.source, p.split), []).append(p.image)
    out = []
    for p in patches:
        if min(p.image.shape[:2]) >= tile_px:
            out.append(p)
            continue
        pool = pools[(p.label, p.source, p.split)]
        # the patch itself first, then others from its pool
        img = mosaic([p.image], tile_px, rng) if len(pool) == 1 else mosaic(pool, tile_px, rng)
        img[: p.image.shape[0], : p.image.shape[1]] = p.image[:tile_px, :tile_px]
        out.append(Patch(img, p.label, p.source, p.group, p.split, p.origin + " (mosaic)"))
    return out


# ---- synthetic patches ------------------------------------------------------------------------------------
def synth_classes(classes: list[str]) -> dict[int, int]:
    """Fine synthetic tissue class id -> model class index, from pipeline.synth.classes.COARSE."""
    from pipeline.synth.classes import COARSE

    mapping = {int(fine): classes.index(name) for fine, name in COARSE.items() if name in classes}
    if not mapping:
        raise TriageError("pipeline.synth.classes.COARSE maps no tissue class to the model's classes")
    return mapping


def render_synthetic(n_per_class: int, classes: list[str], target_mpp: float, size_px: int, seed: int,
                     split: str, cache_dir: str | Path | None = None) -> list[Patch]:
    """``n_per_class`` synthetic H&E patches per model class (fine classes in turn), seeds from ``seed`` up.

    Each patch has its own seed (its own "slide"); splits use disjoint seed ranges. With ``cache_dir`` the
    rendered patches are kept in an .npz keyed by the recipe and the generator's source hash.
    """
    from pipeline.synth.render import render_patch
    from pipeline.synth.version import sources_hash

    fine = synth_classes(classes)
    by_class: dict[int, list[int]] = {}
    for f, c in sorted(fine.items()):
        by_class.setdefault(c, []).append(f)
    recipe = []
    for c, fines in sorted(by_class.items()):
        for i in range(n_per_class):
            recipe.append((fines[i % len(fines)], c, seed + len(recipe)))
    cache = None
    if cache_dir:
        src = sources_hash().encode()
        key = hashlib.sha256(json.dumps([recipe, target_mpp, size_px]).encode() + src).hexdigest()[:16]
        cache = Path(cache_dir) / f"synth-{split}-{key}.npz"
        if cache.is_file():
            images = np.load(cache)["images"]
            return [Patch(img, c, "synthetic", f"synth-{s}", split, f"synth:class={f},seed={s}")
                    for img, (f, c, s) in zip(images, recipe, strict=True)]
    images = np.stack([render_patch(f, s, target_mpp, size_px) for f, _, s in recipe])
    if cache is not None:
        from pipeline.atomic import atomic_path

        with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, images=images)
    return [Patch(img, c, "synthetic", f"synth-{s}", split, f"synth:class={f},seed={s}")
            for img, (f, c, s) in zip(images, recipe, strict=True)]


def render_textures(n_per_class: int, classes: list[str], target_mpp: float, size_px: int, seed: int,
                    split: str, workers: int = 2) -> list[Patch]:
    """``n_per_class`` procedural texture patches per class (pipeline.training.train_textures), one seed each."""
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.training.train_textures import KINDS, render_texture

    recipe = []
    for cls in classes:
        kinds = [k for k, c in KINDS.items() if c == cls]
        for i in range(n_per_class if kinds else 0):
            recipe.append((kinds[i % len(kinds)], classes.index(cls), seed + len(recipe)))
    with ProcessPoolExecutor(max(1, workers)) as pool:
        images = list(pool.map(render_texture, [k for k, _, _ in recipe], [s for _, _, s in recipe],
                               [size_px] * len(recipe), [target_mpp] * len(recipe), chunksize=16))
    return [Patch(img, c, "procedural", f"texture-{s}", split, f"texture:{k},seed={s}")
            for img, (k, c, s) in zip(images, recipe, strict=True)]


# ---- annotated slides (QuPath GeoJSON) ----------------------------------------------------------------------
def read_geojson_annotations(path: str | Path) -> list[tuple[str, list[np.ndarray]]]:
    """(class name, [polygon rings as (n, 2) level-0 x/y arrays]) per annotation of a QuPath GeoJSON export."""
    data = atomic.read_json(path)
    features = data["features"] if data.get("type") == "FeatureCollection" else [data]
    out = []
    for feat in features:
        props = feat.get("properties") or {}
        cls = props.get("classification") or {}
        name = cls.get("name") if isinstance(cls, dict) else cls
        geom = feat.get("geometry") or {}
        polys = geom.get("coordinates", [])
        if geom.get("type") == "Polygon":
            polys = [polys]
        elif geom.get("type") != "MultiPolygon":
            continue
        if name:
            out.append((str(name), [np.asarray(poly[0], np.float64) for poly in polys]))
    return out


def tiles_from_annotations(slide_path, annotations_path, classes: list[str], tile_px: int, target_mpp: float,
                           mpp: float | None = None, max_per_class: int = 200, split: str | None = None,
                           seed: int = 0) -> list[Patch]:
    """Tiles whose four corners and centre lie inside an annotation polygon, read at ``target_mpp``.

    Annotation class names map through :data:`LABEL_MAP` (case-insensitive, spaces/hyphens as underscores).
    The slide is the group; its split is ``split`` or hashed from the slide name.
    """
    from skimage.measure import points_in_poly

    from pipeline.slides.reader import open_slide

    rng = np.random.default_rng(seed)
    group = Path(slide_path).stem
    split = split or hashed_split(group)
    patches = []
    with open_slide(slide_path, mpp=mpp) as slide:
        size0 = tile_px * target_mpp / slide.mpp
        for name, polys in read_geojson_annotations(annotations_path):
            key = re.sub(r"[\s-]+", "_", name.strip().lower())
            cls = LABEL_MAP.get(key, key)
            if cls not in classes:
                continue
            for ring in polys:
                x0, y0 = ring.min(axis=0)
                x1, y1 = ring.max(axis=0)
                xs = np.arange(x0, x1 - size0 + 1, size0)
                ys = np.arange(y0, y1 - size0 + 1, size0)
                if len(xs) == 0 or len(ys) == 0:
                    continue
                gx, gy = (a.ravel() for a in np.meshgrid(xs, ys))
                probes = [(0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5)]
                inside = np.all([points_in_poly(np.c_[gx + dx * size0, gy + dy * size0], ring)
                                 for dx, dy in probes], axis=0)
                cand = np.flatnonzero(inside)
                rng.shuffle(cand)
                for i in cand[:max_per_class]:
                    img = slide.read_tile(int(gx[i]), int(gy[i]), tile_px, target_mpp)
                    patches.append(Patch(img, classes.index(cls), f"annotated:{group}", group, split,
                                         f"{slide_path}@{int(gx[i])},{int(gy[i])}"))
    return patches


# ---- augmentation ----------------------------------------------------------------------------------------
# Ruifrok & Johnston haematoxylin / eosin / DAB optical-density vectors (rows), as in skimage.color.rgb2hed.
_HED_FROM_RGB = np.linalg.inv(np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]))


def crop_batch(images: list[np.ndarray], tile_px: int, rng: np.random.Generator, train: bool,
               scale_jitter: float = 0.15) -> np.ndarray:
    """(B, tile_px, tile_px, 3) uint8: random crops with scale jitter, flips and 90-degree rotations when
    ``train``, else centre crops."""
    from PIL import Image

    out = np.empty((len(images), tile_px, tile_px, 3), np.uint8)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        if not train:
            y, x = (h - tile_px) // 2, (w - tile_px) // 2
            out[i] = img[y:y + tile_px, x:x + tile_px]
            continue
        side = min(h, w, max(8, round(tile_px * np.exp(rng.uniform(-scale_jitter, scale_jitter)))))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[y:y + side, x:x + side]
        if side != tile_px:
            crop = np.asarray(Image.fromarray(crop).resize((tile_px, tile_px), Image.Resampling.BILINEAR))
        crop = np.rot90(crop, rng.integers(4))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = crop
    return out


def colour_augment(batch, generator, hed_sigma: float = 0.2, hed_bias: float = 0.05,
                   brightness: float = 0.1, contrast: float = 0.15, blur_fraction: float = 0.2,
                   grey_fraction: float = 0.1):
    """Per-tile stain (HED scale/shift), brightness/contrast, blur and greyscale jitter of a float (B, 3, H, W)
    0-255 batch. The default HED jitter is the "strong" setting of Tellez et al. (2019): colour is an unreliable
    cue between centres (and between the real sources of each class here), so the model must use morphology."""
    import torch
    import torch.nn.functional as F

    b = batch.shape[0]
    dev = batch.device

    def u(*shape, lo=-1.0, hi=1.0):
        return torch.rand(*shape, generator=generator).to(dev) * (hi - lo) + lo

    m = torch.tensor(_HED_FROM_RGB, dtype=torch.float32, device=dev)
    od = -torch.log((batch.clamp(0, 255) + 1.0) / 256.0)  # (B, 3, H, W)
    hed = torch.einsum("bchw,cd->bdhw", od, m)
    hed = hed * (1 + hed_sigma * u(b, 3, 1, 1)) + hed_bias * u(b, 3, 1, 1)
    od = torch.einsum("bdhw,dc->bchw", hed, torch.linalg.inv(m))
    x = 256.0 * torch.exp(-od) - 1.0
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + contrast * u(b, 1, 1, 1)) + mean * (1 + brightness * u(b, 1, 1, 1))
    blur = torch.rand(b, generator=generator) < blur_fraction
    if blur.any():
        sigma = float(u(1, lo=0.5, hi=1.5))
        k = torch.arange(-2, 3, dtype=torch.float32, device=dev)
        k = torch.exp(-(k**2) / (2 * sigma**2))
        k = k / k.sum()
        sel = x[blur.to(dev)]
        sel = F.conv2d(F.pad(sel, (2, 2, 0, 0), mode="reflect"), k.view(1, 1, 1, 5).repeat(3, 1, 1, 1), groups=3)
        sel = F.conv2d(F.pad(sel, (0, 0, 2, 2), mode="reflect"), k.view(1, 1, 5, 1).repeat(3, 1, 1, 1), groups=3)
        x[blur.to(dev)] = sel
    grey = (torch.rand(b, generator=generator) < grey_fraction).to(dev)
    if grey.any():
        x[grey] = x[grey].mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    return x.clamp(0, 255)


def balanced_weights(labels: np.ndarray, sources: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-sample weights (mean 1): every class the same total weight; within a class, each source in proportion
    to the square root of its size (a large source cannot drown a small one, no class wins by count)."""
    w = np.zeros(len(labels))
    present = [c for c in range(n_classes) if (labels == c).any()]
    for c in present:
        in_c = labels == c
        srcs, counts = np.unique(sources[in_c], return_counts=True)
        share = np.sqrt(counts) / np.sqrt(counts).sum()
        for s, n, sh in zip(srcs, counts, share, strict=True):
            w[in_c & (sources == s)] = sh / n / len(present)
    return w * len(w) / w.sum()


def balanced_sampler_weights(patches: list[Patch], n_classes: int) -> np.ndarray:
    """Sampling probabilities (sum 1) of :func:`balanced_weights`: small real sources are not swamped by
    plentiful synthetic patches."""
    w = balanced_weights(np.array([p.label for p in patches]), np.array([p.source for p in patches]), n_classes)
    return w / w.sum()
