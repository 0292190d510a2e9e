"""How much of each drawn tissue class the workflow's tile grid covers, against a generated slide's truth map.

Runs the workflow's own steps (``qc_slide``: thumbnail + tissue mask; ``grid_for_slide``: tiles kept above the
config's tissue fraction) and compares the kept tiles with ``<slide>.truth.png`` (class ids of
:data:`pipeline.synth.classes.CLASSES` at ``labels_um_per_px``). By hand::

    PYTHONPATH=. python tests/tissue_coverage.py slides_sample/A-HE.svs [more slides] [--thumb-min-mpp 8]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def tile_cover(x, y, size0: float, slide_mpp: float, label_um: float, shape) -> np.ndarray:
    """Boolean map at the truth map's scale: True where a kept tile lies (level-0 corners ``x``, ``y``)."""
    cover = np.zeros(shape, bool)
    f = slide_mpp / label_um  # label px per level-0 px
    for x0, y0 in zip(x, y, strict=True):
        cover[int(round(y0 * f)):int(round((y0 + size0) * f)), int(round(x0 * f)):int(round((x0 + size0) * f))] = True
    return cover


def grid_coverage(slide_path, config: dict) -> dict:
    """Per drawn class: the fraction of its area under kept tiles (``coverage``), the same within the area a grid
    laid on the true tissue map covers (``coverage_of_reachable``); and the share of kept tiles that are tissue.

    A kept tile is "truly tissue" when at least ``tiling.min_tissue_fraction`` of it is drawn tissue in the truth
    map (the grid's own rule, judged on the truth instead of the mask).
    """
    from PIL import Image

    from pipeline.slides.qc import qc_slide
    from pipeline.slides.reader import open_slide
    from pipeline.slides.tiling import grid_for_slide, tile_grid
    from pipeline.synth.classes import CLASSES

    slide_path = Path(slide_path)
    rec = json.loads(Path(f"{slide_path}.truth.json").read_text())
    labels = np.asarray(Image.open(slide_path.parent / rec["labels_png"]))
    tiling = config["tiling"]
    with open_slide(slide_path) as slide:
        qc, _, mask = qc_slide(slide, config)
        grid = grid_for_slide(slide, mask, qc["thumb_mpp"], tiling, slide_path.name)
        slide_mpp = slide.mpp
    size0 = tiling["tile_px"] * tiling["target_mpp"] / slide_mpp
    cover = tile_cover(grid.x, grid.y, size0, slide_mpp, rec["labels_um_per_px"], labels.shape)
    tissue = labels > 0
    # the most any mask can reach: the grid laid on the true tissue map (tiles at the tissue's edge hold less
    # tissue than the grid's minimum fraction whatever the mask)
    ix, iy, _ = tile_grid(tissue, rec["labels_um_per_px"], slide_mpp, rec["width"], rec["height"],
                          tiling["target_mpp"], tiling["tile_px"], tiling["min_tissue_fraction"])
    reach = tile_cover(ix, iy, size0, slide_mpp, rec["labels_um_per_px"], labels.shape)
    classes = [c for c in np.unique(labels) if c != 0]
    coverage = {CLASSES[c]: round(float(cover[labels == c].mean()), 4) for c in classes}
    reachable = {CLASSES[c]: round(float(cover[(labels == c) & reach].mean()), 4) for c in classes
                 if ((labels == c) & reach).any()}
    f = slide_mpp / rec["labels_um_per_px"]
    truth_fraction = np.array([tissue[int(round(y0 * f)):int(round((y0 + size0) * f)),
                                      int(round(x0 * f)):int(round((x0 + size0) * f))].mean()
                               for x0, y0 in zip(grid.x, grid.y, strict=True)])
    truly = truth_fraction >= tiling["min_tissue_fraction"]
    return {"coverage": coverage, "coverage_of_reachable": reachable, "tiles": len(grid),
            "tissue_tile_share": round(float(truly.mean()), 4) if len(truly) else 0.0,
            "min_truth_tissue_fraction": round(float(truth_fraction.min()), 4) if len(truly) else None,
            "thumb_mpp": qc["thumb_mpp"], "qc_status": qc["status"]}


if __name__ == "__main__":
    import argparse

    from pipeline.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("slides", nargs="+", help="generated slides with .truth.json / .truth.png beside them")
    parser.add_argument("--thumb-min-mpp", type=float, default=None,
                        help="override qc.thumb_min_mpp (e.g. 8: the thumbnail scale of a 20 mm slide)")
    args = parser.parse_args()
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "config.yaml")
    if args.thumb_min_mpp:
        cfg["qc"]["thumb_min_mpp"] = args.thumb_min_mpp
    for arg in args.slides:
        print(arg, json.dumps(grid_coverage(arg, cfg), sort_keys=True))
