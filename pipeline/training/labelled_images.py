"""Labelled real images: read a labels CSV into records (path, label, source, case, um/px) and cut tiles from them
at the model's um/px.

Public: :class:`LabelledImage`, :func:`read_labels`, :func:`read_csv_rows`, :func:`model_label`, :func:`image_tiles`.

Three CSV dialects are read, told apart by their columns:

* ``path, label, source, mpp`` (+ optional ``case_id``): the ``evaluate`` verb's format for a user's patches;
* ../shared/data/train/labels.csv: ``path, source, case_id, label, mpp``;
* ../shared/data/patches/labels.csv: ``path, dataset, coarse_label, mpp_um`` (source from ``dataset``, case
  from the file name).

Labels outside the model's classes map to ``non_tumour`` when they name tissue without malignant tumour
(benign tumour, necrosis, normal, stroma...) -- :data:`NON_TUMOUR_LABELS`; anything else is refused. A row
without um/px takes an ``assume_mpp`` entry (a substring of its path or source, first match) or is refused:
the scale is never guessed silently.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import TriageError
from pipeline.he.slide_call import CLASSES

NON_TUMOUR_LABELS = frozenset({"non_tumour", "non-tumour", "normal", "benign", "benign_tumour", "necrosis",
                               "stroma", "fat", "adipose", "muscle", "lymphoid", "mucus", "debris", "background"})


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: str  # one of CLASSES
    original_label: str
    source: str  # the unit of leave-one-source-out
    case: str  # patient / slide: never split across folds
    mpp: float  # um/px of the stored image
    mpp_stated: bool  # False where it came from assume_mpp


def model_label(label: str) -> str:
    """A user's label -> the model's class; ValueError for a label that names neither."""
    key = label.strip().lower().replace(" ", "_")
    if key in CLASSES:
        return key
    if key in NON_TUMOUR_LABELS:
        return "non_tumour"
    raise ValueError(f"label {label!r} is not a model class ({', '.join(CLASSES)}) nor a non-tumour label "
                     f"({', '.join(sorted(NON_TUMOUR_LABELS))})")


def _patch_source(dataset: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", dataset.lower().split("(")[0]).strip("-")[:40] or "unknown"


def _patch_case(path: str) -> str:
    stem = Path(path).stem
    m = re.match(r"osteosarcoma__((?:Case-\d+-[A-Z0-9]+)|P\d+|Case-\d+)", stem)
    return m.group(1) if m else stem


def read_csv_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a labels CSV as dicts; a one-line TriageError naming the file when it cannot be read."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except OSError as exc:
        raise TriageError(f"{path}: cannot read the labels CSV ({exc.strerror})") from exc


def read_labels(csv_path: str | Path, assume_mpp: dict[str, float] | None = None) -> list[LabelledImage]:
    """Records of a labels CSV (paths relative to the CSV's folder unless absolute)."""
    csv_path = Path(csv_path)
    rows = read_csv_rows(csv_path)
    if not rows:
        raise TriageError(f"{csv_path}: no rows; expected a header path,label,source,mpp and one row per image")
    cols = set(rows[0])
    if {"path", "coarse_label"} <= cols:
        dialect = "patches"
    elif {"path", "label", "source"} <= cols:
        dialect = "plain"
    else:
        raise TriageError(f"{csv_path}: needs columns path,label,source,mpp (got {', '.join(sorted(cols))})")
    out = []
    for n, row in enumerate(rows, start=2):
        if dialect == "patches":
            label, source, case = row["coarse_label"], _patch_source(row.get("dataset", "")), _patch_case(row["path"])
            mpp_text = row.get("mpp_um", "")
            key_text = f"{row['path']} {row.get('dataset', '')}"
        else:
            label, source = row["label"], row["source"]
            case = row.get("case_id") or Path(row["path"]).stem
            mpp_text = row.get("mpp", "")
            key_text = f"{row['path']} {source}"
        try:
            cls = model_label(label)
        except ValueError as exc:
            raise TriageError(f"{csv_path}:{n}: {exc}") from None
        stated = bool(mpp_text and mpp_text.strip())
        if stated:
            try:
                mpp = float(mpp_text)
            except ValueError:
                raise TriageError(f"{csv_path}:{n}: mpp {mpp_text!r} is not a number (um/px)") from None
        else:
            mpp = next((v for k, v in (assume_mpp or {}).items() if k.lower() in key_text.lower()), None)
            if mpp is None:
                raise TriageError(f"{csv_path}:{n}: {row['path']} states no um/px; give it in the CSV's mpp column "
                                  "or pass --assume-mpp SUBSTRING=MPP (the scale is never guessed)")
        if not 0.05 < mpp < 16:
            raise TriageError(f"{csv_path}:{n}: um/px {mpp} is outside 0.05-16")
        path = Path(row["path"])
        out.append(LabelledImage(path if path.is_absolute() else csv_path.parent / path, cls, label, source,
                                 f"{source}:{case}", mpp, stated))
    return out


def parse_assume_mpp(items: list[str]) -> dict[str, float]:
    """``["Osteosarcoma=1.0", ...]`` -> ``{"Osteosarcoma": 1.0, ...}`` (order kept: first match wins)."""
    out = {}
    for item in items:
        key, _, value = item.rpartition("=")
        try:
            out[key] = float(value)
        except ValueError:
            raise TriageError(f"--assume-mpp {item!r}: expected SUBSTRING=MPP (e.g. Osteosarcoma=1.0)") from None
        if not key:
            raise TriageError(f"--assume-mpp {item!r}: expected SUBSTRING=MPP (e.g. Osteosarcoma=1.0)")
    return out


def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise TriageError(f"{path}: cannot read the image ({exc}); check the CSV's path column") from None


def rescale(image: np.ndarray, factor: float) -> np.ndarray:
    """Resize by ``factor`` (box filter down, bicubic up)."""
    from PIL import Image

    if abs(factor - 1.0) < 1e-3:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    method = Image.Resampling.BOX if factor < 1 else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(image).resize(size, method))


def image_tiles(image: np.ndarray, image_mpp: float, target_mpp: float, tile_px: int, n: int,
                rng: np.random.Generator | None = None, scale_jitter: float = 0.0) -> np.ndarray:
    """(k, tile_px, tile_px, 3) uint8 tiles of ``image`` at ``target_mpp``.

    With ``rng`` (training): ``n`` random crops, each at a scale jittered by up to +-``scale_jitter``
    (log-uniform), with a random flip and 90-degree rotation. Without (evaluation): up to ``n`` tiles on a
    regular grid spread over the image (a single centre tile when the image holds one). An image smaller than
    a tile at ``target_mpp`` is reflect-padded (never enlarged).
    """
    factor = image_mpp / target_mpp
    if rng is None:
        img = _pad_to(rescale(image, factor), tile_px)
        h, w = img.shape[:2]
        ny, nx = max(1, h // tile_px), max(1, w // tile_px)
        while ny * nx > n:
            ny, nx = (ny - 1, nx) if ny >= nx else (ny, nx - 1)
        ys = np.linspace(0, h - tile_px, ny).round().astype(int) if ny > 1 else [(h - tile_px) // 2]
        xs = np.linspace(0, w - tile_px, nx).round().astype(int) if nx > 1 else [(w - tile_px) // 2]
        return np.stack([img[y:y + tile_px, x:x + tile_px] for y in ys for x in xs])
    out = np.empty((n, tile_px, tile_px, 3), np.uint8)
    for i in range(n):
        f = factor * float(np.exp(rng.uniform(-scale_jitter, scale_jitter)))
        img = _pad_to(rescale(image, f), tile_px)
        h, w = img.shape[:2]
        y, x = rng.integers(0, h - tile_px + 1), rng.integers(0, w - tile_px + 1)
        crop = np.rot90(img[y:y + tile_px, x:x + tile_px], rng.integers(4))
        out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
    return out


def _pad_to(img: np.ndarray, tile_px: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h >= tile_px and w >= tile_px:
        return img
    py, px = max(0, tile_px - h), max(0, tile_px - w)
    return np.pad(img, ((py // 2, py - py // 2), (px // 2, px - px // 2), (0, 0)), mode="reflect")
