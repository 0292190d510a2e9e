"""The same IHC section scanned twice (two scanners): register one scan onto the other and read the marker on
both over the same tissue.

* :func:`registered_tiles` - the reference scan's tissue tiles carried through the registration onto the other
  scan, kept where both scans have tissue (the registered region); pure numpy;
* :func:`compare_scans` - :func:`pipeline.ihc.register.register_slides`, :func:`registered_tiles`, then
  :func:`pipeline.ihc.quantify.quantify_ihc` on each scan over its own copy of those tiles (each scan calibrated
  on its own tiles: stain background and nucleus threshold, as quantify-ihc does), and the difference;
* :func:`run` - the verb ``python -m pipeline compare-scans --ref A --other B --out result.json``.

Frames: x, y are level-0 pixels of each scan's top-left corner of a tile; ``other_to_ref`` is the registration's
3x3 matrix from the other scan's level-0 px to the reference scan's level-0 px (``matrix_level0_px`` of
registration.json with the reference as "H&E"). A tile is a square of ``tile_um`` um on the reference scan; on
the other scan it is the axis-aligned square of the same physical side centred where the reference tile's centre
lands, so the two squares hold the same tissue only when the scans are not turned against each other: the
function refuses a rotation above ``max_rotation_deg`` (two scans of one glass slide are not turned).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.ihc.params import IhcParams
from pipeline.ihc.registration import map_points

SAMPLES = 4  # points per side of a tile at which the tissue masks are looked up


def _mask_fraction(mask: np.ndarray, mask_mpp: float, slide_mpp: float, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Whether each level-0 point (``px``, ``py``) lies on ``mask`` (a whole-slide picture at ``mask_mpp``)."""
    col = np.floor(px * slide_mpp / mask_mpp).astype(np.int64)
    row = np.floor(py * slide_mpp / mask_mpp).astype(np.int64)
    ok = (row >= 0) & (row < mask.shape[0]) & (col >= 0) & (col < mask.shape[1])
    out = np.zeros(len(px), bool)
    out[ok] = mask[row[ok], col[ok]]
    return out


def registered_tiles(ref_size_px: tuple[int, int], ref_mpp: float, ref_mask: np.ndarray, ref_mask_mpp: float,
                     other_size_px: tuple[int, int], other_mpp: float, other_mask: np.ndarray,
                     other_mask_mpp: float, other_to_ref: np.ndarray, tile_um: float,
                     min_tissue_fraction: float = 0.5) -> dict:
    """Tiles of ``tile_um`` over the reference scan, kept where at least ``min_tissue_fraction`` of the tile is
    tissue on both scans (``SAMPLES`` x ``SAMPLES`` points per tile, the other scan's looked up through the
    registration) and the other scan's square lies wholly on that scan.

    Returns ``{"ref_x", "ref_y", "other_x", "other_y"}`` (int64 level-0 top-left corners, one row per kept tile),
    ``ref_tile_level0`` and ``other_tile_level0`` (sides in level-0 px) and ``candidates`` (tiles laid).
    """
    if tile_um <= 0 or min(ref_mpp, other_mpp, ref_mask_mpp, other_mask_mpp) <= 0:
        raise ValueError("tile_um and every mpp must be > 0")
    to_other = np.linalg.inv(np.asarray(other_to_ref, np.float64))
    side0 = tile_um / ref_mpp
    cols, rows = int(ref_size_px[0] // side0), int(ref_size_px[1] // side0)
    gx, gy = np.meshgrid(np.arange(cols) * side0, np.arange(rows) * side0)
    x, y = gx.ravel(), gy.ravel()
    offsets = (np.arange(SAMPLES) + 0.5) / SAMPLES * side0
    ox, oy = (o.ravel() for o in np.meshgrid(offsets, offsets))
    px, py = (x[:, None] + ox[None, :]).ravel(), (y[:, None] + oy[None, :]).ravel()
    qx, qy = map_points(to_other, px, py)
    on_ref = _mask_fraction(ref_mask, ref_mask_mpp, ref_mpp, px, py).reshape(len(x), -1).mean(axis=1)
    on_other = _mask_fraction(other_mask, other_mask_mpp, other_mpp, qx, qy).reshape(len(x), -1).mean(axis=1)
    other_side0 = tile_um / other_mpp
    cx, cy = x + side0 / 2.0, y + side0 / 2.0
    ox0, oy0 = (c - other_side0 / 2.0 for c in map_points(to_other, cx, cy))
    fits = ((ox0 >= 0) & (oy0 >= 0) & (ox0 + other_side0 <= other_size_px[0])
            & (oy0 + other_side0 <= other_size_px[1]))
    keep = (on_ref >= min_tissue_fraction) & (on_other >= min_tissue_fraction) & fits
    return {"ref_x": np.round(x[keep]).astype(np.int64), "ref_y": np.round(y[keep]).astype(np.int64),
            "other_x": np.round(ox0[keep]).astype(np.int64), "other_y": np.round(oy0[keep]).astype(np.int64),
            "ref_tile_level0": side0, "other_tile_level0": other_side0, "candidates": int(len(x))}


def _tissue(slide, mask_mpp: float, thumb_mpp: float) -> tuple[np.ndarray, float, np.ndarray]:
    """(tissue mask, its um/px, the thumbnail at ``thumb_mpp`` that quantify-ihc estimates the glass colour
    from) of an open slide. The mask is the registration's (:meth:`pipeline.ihc.registration.Level.from_rgb`:
    the tissue mask, or where haematoxylin is dense), which keeps the pale fields some scanners render almost as
    glass (the OS-2 VSI scan: the thumbnail tissue mask alone finds a quarter of its tissue)."""
    from pipeline.ihc.registration import Level

    rgb, mpp = slide.read_downsampled(max(mask_mpp, slide.mpp))
    return Level.from_rgb(rgb, mpp).mask > 0.5, mpp, slide.read_downsampled(max(thumb_mpp, slide.mpp))[0]


def _spread(n: int, most: int | None) -> np.ndarray:
    """Indices of at most ``most`` of ``n`` items, spread evenly (all of them when ``most`` is None)."""
    if most is None or n <= most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, most).round().astype(int))


def compare_scans(ref_path: str | Path, other_path: str | Path, entry: dict, params: IhcParams | None = None,
                  tile_um: float = 100.0, max_tiles: int | None = None, threads: int = 1,
                  mask_mpp: float = 2.0, max_rotation_deg: float = 5.0) -> dict:
    """Register the scan at ``other_path`` onto the one at ``ref_path`` and read the marker ``entry`` on both over
    the registered region (:func:`registered_tiles`; at most ``max_tiles`` of them, spread evenly).

    Returns ``{"registration": quality and transform, "tiles": {...}, "ref": summary, "other": summary,
    "difference": {metric: other - ref}}``; each summary is quantify_ihc's (counts, metrics, method). Raises
    ValueError when the registration failed or the scans are turned by more than ``max_rotation_deg``.
    """
    from pipeline.ihc.quantify import quantify_ihc
    from pipeline.ihc.register import register_slides
    from pipeline.slides.reader import open_slide

    params = params or IhcParams()
    record = register_slides(ref_path, other_path)
    if record["status"] != "ok":
        raise ValueError(f"registration failed: {record['reason']}")
    transform = record["transform"]
    turn = min(transform["rotation_deg"], 360.0 - transform["rotation_deg"])
    if transform["flip"] or turn > max_rotation_deg:
        raise ValueError(f"the scans are turned by {turn:.1f} degrees (flip {transform['flip']}): axis-aligned "
                         f"tiles would not hold the same tissue (at most {max_rotation_deg:g} degrees)")
    out = {"registration": {**record["quality"], "transform": transform}, "tile_um": tile_um}
    with open_slide(ref_path) as ref, open_slide(other_path) as other:
        (ref_mask, ref_mask_mpp, ref_thumb), (oth_mask, oth_mask_mpp, oth_thumb) = (
            _tissue(s, mask_mpp, params.thumb_mpp) for s in (ref, other))
        tiles = registered_tiles(ref.dimensions, ref.mpp, ref_mask, ref_mask_mpp, other.dimensions, other.mpp,
                                 oth_mask, oth_mask_mpp, np.array(transform["matrix_level0_px"]), tile_um)
        pick = _spread(len(tiles["ref_x"]), max_tiles)
        out["tiles"] = {"laid": tiles["candidates"], "in_registered_region": int(len(tiles["ref_x"])),
                        "quantified": int(len(pick))}
        for name, slide, thumb in (("ref", ref, ref_thumb), ("other", other, oth_thumb)):
            xs, ys = tiles[f"{name}_x"][pick], tiles[f"{name}_y"][pick]
            _, summary = quantify_ihc(slide, xs, ys, tile_um, entry, params, threads, thumb)
            out[name] = summary
    metric = entry["reading"]["metric"]
    a, b = out["ref"]["metrics"].get(metric), out["other"]["metrics"].get(metric)
    out["difference"] = {metric: None if a is None or b is None else round(b - a, 3)}
    return out


# ---- CLI: python -m pipeline compare-scans ------------------------------------------------------------
def configure_parser(parser) -> None:
    parser.add_argument("--ref", required=True, help="the reference scan (slide file): tiles are laid on it")
    parser.add_argument("--other", required=True, help="the other scan of the same section (registered onto --ref)")
    parser.add_argument("--marker", default="Ki67", help="the section's marker, from the knowledge base (Ki67)")
    parser.add_argument("--config", default="configs/config.yaml", help="config file (its `ihc` section)")
    parser.add_argument("--markers", default=None, help="marker knowledge base (default: the config's `markers`)")
    parser.add_argument("--tile-um", type=float, default=100.0, help="tile side in um (default 100)")
    parser.add_argument("--max-tiles", type=int, default=None, help="quantify at most this many tiles, spread evenly")
    parser.add_argument("--threads", type=int, default=1, help="worker threads")
    parser.add_argument("--out", required=True, help="JSON to write: registration, tiles, both summaries")


def run(args) -> None:
    import logging

    from pipeline import atomic
    from pipeline.config import load_config
    from pipeline.ihc.markers import load_markers, marker_entry

    config = load_config(args.config)
    entry = marker_entry(load_markers(args.markers or config["markers"]), args.marker)
    result = compare_scans(args.ref, args.other, entry, IhcParams.from_config(config.get("ihc")), args.tile_um,
                           args.max_tiles, args.threads)
    atomic.write_json(args.out, {"marker": args.marker, **result})
    metric = entry["reading"]["metric"]
    logging.getLogger(__name__).info(
        "%s: reference %s, other %s (difference %s) over %d tiles of %g um; registration residual p95 %s um",
        metric, result["ref"]["metrics"].get(metric), result["other"]["metrics"].get(metric),
        result["difference"][metric], result["tiles"]["quantified"], args.tile_um,
        result["registration"].get("residual_p95_um"))
