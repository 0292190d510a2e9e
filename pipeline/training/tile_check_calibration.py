"""Calibrate the H&E tile check (:mod:`pipeline.he.tile_check`) on real H&E only, and say what it costs there.

Tiles: up to ``--tiles-per-image`` grid tiles of every image of the labels CSVs (../shared/data/train and
../shared/data/patches), at the model's um/px and tile size, as ``evaluate`` cuts them, kept when they are
not glass (:func:`is_tissue`). Nothing that is not H&E
is read: the non-H&E test tiles (tests/ood_tiles.py) are the test, never the calibration.

1. The H&E colour plane: the least-variance direction (SVD) of the unit OD vectors of all stained pixels is its
   normal; ``off_plane_deg`` is the ``--pixel-quantile`` of the stained pixels' angle off that plane.
2. Per tile statistic, a threshold at a stated extreme quantile of the real tiles, with a margin: "at least"
   checks at quantile ``q`` divided by ``--margin``, "at most" checks at ``1 - q`` multiplied by it.

Prints the ``tile_check`` section for configs/config.yaml (and the schema defaults) and, per source, the share of
real tiles over 1 with those thresholds (and with the shipped ones, ``--check``). Run::

    python -m pipeline.training.tile_check_calibration ../shared/data/train/labels.csv \\
        ../shared/data/patches/labels.csv
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np

from pipeline.he.tile_check import CHECKS, OD_LUT, check_ratios, default_params, plane_axes, tile_statistics

# Scales of the sources that state none (the same evidence as TRAIN_ASSUME_MPP in pipeline/rules/training.smk).
ASSUME_MPP = {"monuseg": 0.25, "ucsb": 0.33, "oral-scc-guan": 0.4, "_100x": 1.0, "_400x": 0.25,
              "Osteosarcoma": 1.0, "Komura": 0.5, "TCGA-COAD": 0.5}
# Definitions (not fitted): stained = OD vector at least this long (as the IHC stain check); eosin = more than
# this angle on eosin's side of the plane of the reference haematoxylin and DAB vectors (a few degrees: JPEG and
# scanner noise move a pixel's colour direction by about that much); dark = every channel below this (near black:
# OD > 1 in every channel, darker than brightfield stain over an area); dense = OD vector longer than this (as dark
# as a dark nucleus); glass = fewer stained pixels than this fraction (real H&E tissue tiles, fat included, have
# >= 4 %; the real crops below 2 % are blank glass, viewed: the glass check cannot be calibrated on sources whose
# crops include glass).
DEFINITIONS = {"stained_od_min": 0.15, "eosin_deg": 4.0, "dark_max_rgb": 25, "dense_od_min": 1.0,
               "min_stained_fraction": 0.02}
FRACTION_MARGIN = 0.05


def real_tiles(csvs: list[str], mpp: float, tile_px: int, per_image: int) -> dict[str, np.ndarray]:
    """Source name -> (N, tile_px, tile_px, 3) uint8 real H&E tiles."""
    from pipeline.training.labelled_images import image_tiles, load_rgb, read_labels

    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for csv in csvs:
        for rec in read_labels(csv, ASSUME_MPP):
            tiles = image_tiles(load_rgb(rec.path), rec.mpp, mpp, tile_px, per_image)
            out[rec.source].append(tiles[is_tissue(tiles)])
    return {k: np.concatenate(v) for k, v in sorted(out.items())}


def is_tissue(tiles: np.ndarray) -> np.ndarray:
    """Tiles that are not glass by the glass check's definition (``min_stained_fraction`` of pixels stained):
    the blank crops of some sources (empty TCIA tiles, the bright corners of microscope photos) are glass, not
    H&E tissue, and calibrate nothing."""
    stained = np.linalg.norm(OD_LUT[tiles], axis=-1) >= DEFINITIONS["stained_od_min"]
    return stained.mean(axis=(1, 2)) >= DEFINITIONS["min_stained_fraction"]


def fit_plane(tiles: np.ndarray, od_min: float, quantile: float, step: int = 4) -> dict:
    """The H&E colour region of real stained pixels: ``plane_normal`` (least-variance direction of their unit OD
    vectors), ``off_plane_deg`` (their ``quantile`` angle off the plane) and ``hue_range_deg`` (their in-plane
    angle from haematoxylin towards eosin at ``1 - quantile`` and ``quantile``), angles rounded outwards."""
    od = OD_LUT[tiles[:, ::step, ::step]].reshape(-1, 3).astype(np.float64)
    norm = np.linalg.norm(od, axis=1)
    unit = od[norm >= od_min] / norm[norm >= od_min, None]
    normal = np.linalg.svd(unit, full_matrices=False)[2][2]
    normal = normal * np.sign(normal[2])  # one orientation, so the config's numbers do not flip between runs
    normal, h_dir, e_dir = plane_axes(normal)
    off = np.degrees(np.arcsin(np.abs(unit @ normal)))
    hue = np.degrees(np.arctan2(unit @ e_dir, unit @ h_dir))
    lo, hi = np.quantile(hue, [1.0 - quantile, quantile])
    return {"plane_normal": [round(float(v), 4) for v in normal],
            "off_plane_deg": float(np.ceil(np.quantile(off, quantile) * 10) / 10),
            "hue_range_deg": [float(np.floor(lo * 10) / 10), float(np.ceil(hi * 10) / 10)]}


def thresholds(stats: dict[str, np.ndarray], quantile: float, margin: float) -> dict[str, float]:
    """"At least" thresholds: the ``quantile`` of real tiles divided by ``margin``; "at most" ones (fractions of
    pixels): the ``1 - quantile`` quantile plus :data:`FRACTION_MARGIN`."""
    out = {}
    for stat, key, kind in CHECKS.values():
        if key in DEFINITIONS:
            continue
        if kind == "min":
            out[key] = float(np.quantile(stats[stat], quantile)) / margin
        else:  # fractions near 0 on real H&E: a relative margin would be no margin
            out[key] = float(np.quantile(stats[stat], 1.0 - quantile)) + FRACTION_MARGIN
    return {k: float(f"{v:.3g}") for k, v in out.items()}


def false_alarms(by_source: dict[str, dict], params: dict) -> dict[str, tuple[int, float, dict]]:
    """Source -> (tiles, share over 1, {check: tiles it fails})."""
    out = {}
    for source, stats in by_source.items():
        ratios = check_ratios(stats, params)
        fails = {name: int((ratios[:, i] > 1).sum()) for i, name in enumerate(CHECKS) if (ratios[:, i] > 1).any()}
        out[source] = (len(ratios), float((ratios.max(axis=1) > 1).mean()), fails)
    return out


def calibrate(tiles: dict[str, np.ndarray], quantile: float, margin: float, pixel_quantile: float) -> tuple[dict, dict]:
    """(the tile_check parameters, per-source statistics)."""
    pooled = np.concatenate(list(tiles.values()))
    params = {"enabled": True, **DEFINITIONS, **fit_plane(pooled, DEFINITIONS["stained_od_min"], pixel_quantile)}
    by_source = {k: tile_statistics(v, params) for k, v in tiles.items()}
    pooled_stats = {s: np.concatenate([b[s] for b in by_source.values()]) for s in next(iter(by_source.values()))}
    params.update(thresholds(pooled_stats, quantile, margin))
    return params, by_source


def _print_table(title: str, rows: dict[str, tuple[int, float, dict]], file) -> None:
    print(f"\n{title}\n| source | tiles | over 1 | failed checks |\n|---|---|---|---|", file=file)
    total = sum(n for n, _, _ in rows.values())
    over = sum(n * share for n, share, _ in rows.values())
    for source, (n, share, fails) in rows.items():
        print(f"| {source} | {n} | {100 * share:.1f} % | {', '.join(f'{k} {v}' for k, v in fails.items())} |",
              file=file)
    print(f"| all | {total} | {100 * over / max(total, 1):.1f} % | |", file=file)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("labels", nargs="+", help="labels CSVs of real H&E images (train/, patches/)")
    ap.add_argument("--mpp", type=float, default=1.0, help="the model's um/px")
    ap.add_argument("--tile-px", type=int, default=224)
    ap.add_argument("--tiles-per-image", type=int, default=4)
    ap.add_argument("--quantile", type=float, default=0.002, help="extreme quantile of real tiles per check")
    ap.add_argument("--margin", type=float, default=1.5, help="thresholds moved this factor past the quantile")
    ap.add_argument("--pixel-quantile", type=float, default=0.995, help="of real pixels' angle off the H&E plane")
    args = ap.parse_args(argv)
    tiles = real_tiles(args.labels, args.mpp, args.tile_px, args.tiles_per_image)
    params, by_source = calibrate(tiles, args.quantile, args.margin, args.pixel_quantile)
    print("tile_check:  # calibrated: " + " ".join(sys.argv[1:]))
    for key, value in params.items():
        print(f"  {key}: {str(value).lower() if isinstance(value, bool) else value}")
    _print_table("Real H&E over 1 with these thresholds", false_alarms(by_source, params), sys.stdout)
    shipped = default_params()
    if shipped != params:
        _print_table("Real H&E over 1 with the shipped thresholds (config schema defaults)",
                     false_alarms({k: tile_statistics(v, shipped) for k, v in tiles.items()}, shipped), sys.stdout)


if __name__ == "__main__":
    main()
