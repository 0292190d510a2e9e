"""A contact sheet of a generated cohort: per slide, its thumbnail and a 1.0 um/px tile from each drawn class.

Public: :func:`contact_sheet` (reads the slides and their ``.truth.json`` / ``.truth.png``, writes one PNG).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.synth.classes import CLASSES


def contact_sheet(folder: str | os.PathLike, out: str | os.PathLike, tile_um: float = 256.0) -> Path:
    """One PNG: per slide of a generated cohort, its thumbnail and a 1.0 um/px tile from each drawn class."""
    import openslide
    from PIL import Image, ImageDraw
    from scipy import ndimage

    folder = Path(folder)
    rows = []
    for truth_path in sorted(folder.glob("*.truth.json")):
        rec = json.loads(truth_path.read_text())
        slide = openslide.OpenSlide(str(folder / rec["slide"]))
        labels = np.asarray(Image.open(folder / rec["labels_png"]))
        side = int(tile_um)
        cells = [np.asarray(slide.get_thumbnail((side, side)).convert("RGB"))]
        names = ["thumbnail"]
        for cid in np.unique(labels):
            if cid == 0:
                continue
            # label pixels at least half a tile inside the class region
            half_tile = max(1, int(tile_um / rec["labels_um_per_px"]) // 2)
            inner = ndimage.binary_erosion(labels == cid, iterations=half_tile)
            ys, xs = np.nonzero(inner)
            if not len(ys):
                continue
            k = len(ys) // 2
            um = rec["labels_um_per_px"]
            x0 = int((xs[k] * um - tile_um / 2) / rec["mpp"])
            y0 = int((ys[k] * um - tile_um / 2) / rec["mpp"])
            region = slide.read_region((max(0, x0), max(0, y0)), 0, (int(tile_um / rec["mpp"]),) * 2).convert("RGB")
            cells.append(np.asarray(region.resize((side, side), Image.Resampling.BOX)))
            names.append(CLASSES[cid])
        row = Image.new("RGB", (side * 6, side + 18), "white")
        draw = ImageDraw.Draw(row)
        for j, (img, name) in enumerate(zip(cells[:6], names[:6], strict=True)):
            pad = np.full((side, side, 3), 255, np.uint8)
            pad[: img.shape[0], : img.shape[1]] = img
            row.paste(Image.fromarray(pad), (j * side, 18))
            draw.text((j * side + 4, 3), f"{rec['slide']} {rec['stain']}: {name}" if j == 0 else name, fill="black")
        rows.append(row)
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    out = Path(out)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out

