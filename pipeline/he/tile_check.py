"""Is this tile H&E-stained tissue at all? An explainable check from stain and image statistics (pure numpy).

The tile classifier's out-of-distribution score (a feature distance, :mod:`pipeline.he.models`) misses much of
what is not H&E tissue: a grey or small model does not see DAB brown, and blur or ink can land near its training
features. This check reads six statistics of each RGB tile at the model's um/px, each against a threshold set on
real H&E only (config section ``tile_check``; calibrated by :mod:`pipeline.training.tile_check_calibration`, see
docs/model_selection.md):

* ``stained``: the fraction of pixels whose optical density (OD, Beer-Lambert against white) is at least
  ``stained_od_min`` long. Empty glass has none. Flagged below ``min_stained_fraction`` (a definition: real
  tissue tiles, fat included, have at least 4 %).
* ``off_plane``: among stained pixels, the fraction whose OD colour direction lies outside the region of real
  H&E colours: more than ``off_plane_deg`` degrees off their plane (fitted on real H&E pixels: haematoxylin, eosin
  and their mixtures), or in the plane beyond ``hue_range_deg`` (in-plane angle from haematoxylin towards
  eosin). DAB brown (29 degrees off), grey and black (20 degrees off), ink bluer than haematoxylin and a
  photograph's arbitrary colours leave it. Flagged above ``max_off_plane_fraction``.
* ``eosin``: among stained pixels, the fraction more than ``eosin_deg`` degrees on eosin's side of the plane
  through the reference haematoxylin and DAB vectors (:data:`pipeline.ihc.stain.HDAB_REFERENCE`): the eosin a
  real H&E always shows somewhere, whatever its haematoxylin's shade. An IHC tile's colours are haematoxylin, DAB
  and their mixtures, all on that plane (or on the far side: a bluer counterstain), so a DAB-positive tile, a
  DAB-negative one and one whose counterstain is shifted along the plane all read near 0. Flagged below
  ``min_eosin_fraction``.
* ``sharpness``: Laplacian energy of the summed OD at 4 px over that at 8 px (both on block means). In focus,
  tissue has structure at both scales; a tile blurred by 8 um has almost none at the finer one. Flagged below
  ``min_sharpness``.
* ``dark``: the fraction of pixels darker than ``dark_max_rgb`` in every channel: brightfield tissue is never
  that dark over an area, a fluorescence scan's background is. Flagged above ``max_dark_fraction``.
* ``dense``: among stained pixels, the fraction whose OD vector is longer than ``dense_od_min`` (a definition:
  as dense as a dark nucleus). A thin section is that dense in nuclei and in spots; marker ink (or a fold) over
  most of its stained area. Flagged above ``max_dense_fraction``.

:func:`tile_check_scores` turns them into one score per tile, scaled like the model's (> 1 = not H&E tissue): the
largest of the six ratios to their thresholds (``threshold / value`` for the "at least" checks, ``value /
threshold`` for the "at most" ones); :func:`tile_check_reasons` names the check that decided. Public:
:func:`default_params`, :func:`tile_statistics`, :func:`check_ratios`, :func:`tile_check_scores`,
:func:`tile_check_reasons`, :func:`plane_axes`, :func:`eosin_side_normal`, :data:`OD_LUT`, :data:`CHECKS`.
"""

from __future__ import annotations

import functools

import numpy as np

from pipeline.ihc.stain import _DAB, _E, _H, _unit

# name -> (statistic, threshold key, "min" = flagged below the threshold / "max" = flagged above it)
CHECKS = {
    "glass": ("stained", "min_stained_fraction", "min"),
    "colour": ("off_plane", "max_off_plane_fraction", "max"),
    "no_eosin": ("eosin", "min_eosin_fraction", "min"),
    "blur": ("sharpness", "min_sharpness", "min"),
    "dark": ("dark", "max_dark_fraction", "max"),
    "dense": ("dense", "max_dense_fraction", "max"),
}
_CHUNK = 8
# Every second pixel in each direction, at a quarter of the cost: the pixel fractions move by at most 0.02 on the
# 885 real calibration tiles; the sharpness ratio (of 4 and 8 px block means of the sampled pixels) is another
# number than on all pixels, and its threshold was calibrated on this sampling.
_STRIDE = 2
# Pixel class code (bits: 1 stained, 2 outside the H&E colour region, 4 eosin side, 8 dark, 16 dense) -> five
# 12-bit counters packed in one int64 (stained | stained & outside | stained & eosin side | dark | dense), so one
# sum counts all five (over segments of fewer than 4,096 pixels: a 224 px tile at stride 2 is four segments).
_CODES = np.arange(32)
_COUNTERS = [(_CODES & 1) > 0, (_CODES & 3) == 3, (_CODES & 5) == 5, (_CODES & 8) > 0, (_CODES & 17) == 17]
_BITS = 12
_PACKED = sum(c.astype(np.int64) << (_BITS * k) for k, c in enumerate(_COUNTERS))
_SEGMENT_PX = (1 << _BITS) - 1
_FLOOR = 1e-6  # a "min" statistic of 0 gives threshold / 1e-6, far above 1 (finite: float32-safe after clipping)
SCORE_MAX = 1e3
# OD of a uint8 channel value against white 255 (the +1 keeps log finite), as a lookup table.
OD_LUT = (-np.log10((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)


def default_params() -> dict:
    """The ``tile_check`` section's defaults from the config schema (the calibrated thresholds)."""
    from pipeline.config import load_schema

    props = load_schema("config")["properties"]["tile_check"]["properties"]
    return {k: v["default"] for k, v in props.items()}


def plane_axes(plane_normal) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit normal, in-plane haematoxylin direction, in-plane direction 90 degrees towards eosin), float32."""
    normal = _unit(plane_normal)
    h_dir = _unit(_unit(_H) - (_unit(_H) @ normal) * normal)
    e_dir = np.cross(normal, h_dir)
    if e_dir @ _unit(_E) < 0:
        e_dir = -e_dir
    return normal.astype(np.float32), h_dir.astype(np.float32), e_dir.astype(np.float32)


def eosin_side_normal() -> np.ndarray:
    """Unit normal (float32) of the plane through the reference haematoxylin and DAB vectors, oriented towards the
    reference eosin (39 degrees on that side): a colour's angle to this plane says how much eosin it holds beyond
    what any mixture of haematoxylin and DAB can show."""
    normal = _unit(np.cross(_unit(_H), _unit(_DAB)))
    return (normal if normal @ _unit(_E) > 0 else -normal).astype(np.float32)


def _check_tiles(tiles: np.ndarray) -> None:
    if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 RGB tiles, got {tiles.shape} {tiles.dtype}")
    if min(tiles.shape[1:3]) < 32:
        raise ValueError(f"tiles of {tiles.shape[1]}x{tiles.shape[2]} px are too small for the sharpness check")


def _block_mean(img: np.ndarray, k: int) -> np.ndarray:
    n, h, w = img.shape
    h, w = h // k * k, w // k * k
    return img[:, :h, :w].reshape(n, h // k, k, w // k, k).mean(axis=(2, 4))


def _laplacian_energy(img: np.ndarray) -> np.ndarray:
    lap = 4.0 * img[:, 1:-1, 1:-1] - img[:, :-2, 1:-1] - img[:, 2:, 1:-1] - img[:, 1:-1, :-2] - img[:, 1:-1, 2:]
    return np.square(lap).mean(axis=(1, 2))


@functools.lru_cache(maxsize=4)
def _colour_tables(key: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(pixel class code, summed OD) for every colour at 7 bits per channel (2 M entries, built once per
    parameter set): code bit 1 = stained, 2 = outside the H&E colour region, 4 = eosin side, 8 = dark, 16 =
    dense."""
    od_min, normal, hue_lo, hue_hi, off_deg, eosin_deg, dark_max, dense_min = key
    normal, h_dir, e_dir = plane_axes(normal)
    levels = np.arange(0, 256, 2, dtype=np.float32) + 0.5  # the centre of each 7-bit bin
    od1 = -np.log10((levels + 1.0) / 256.0)
    r, g, b = od1[:, None, None], od1[None, :, None], od1[None, None, :]  # broadcast to (128, 128, 128)

    def dot(v) -> np.ndarray:
        return r * v[0] + g * v[1] + b * v[2]

    norm = np.sqrt(r * r + g * g + b * b)
    lo, hi = np.radians(hue_lo), np.radians(hue_hi)
    a, bb = dot(h_dir), dot(e_dir)
    off = ((np.abs(dot(normal)) > np.float32(np.sin(np.radians(off_deg))) * norm)
           | (bb * np.float32(np.cos(lo)) - a * np.float32(np.sin(lo)) < 0)
           | (a * np.float32(np.sin(hi)) - bb * np.float32(np.cos(hi)) < 0))
    eosin = dot(eosin_side_normal()) > np.float32(np.sin(np.radians(eosin_deg))) * norm
    dk = levels < dark_max
    dark = dk[:, None, None] & dk[None, :, None] & dk[None, None, :]
    code = ((norm >= od_min).astype(np.uint8) | (off.astype(np.uint8) << 1) | (eosin.astype(np.uint8) << 2)
            | (dark.astype(np.uint8) << 3) | ((norm > dense_min).astype(np.uint8) << 4))
    return code.ravel(), (r + g + b).ravel()


def tile_statistics(tiles: np.ndarray, params: dict | None = None) -> dict[str, np.ndarray]:
    """The six statistics (float64 arrays of length N) of ``(N, H, W, 3)`` uint8 RGB tiles; see the module.

    Every second pixel in each direction is classified through a table of every colour at 7 bits per channel (OD
    error <= 0.004): one lookup per pixel, so the check costs a fraction of the model's time.
    """
    _check_tiles(tiles)
    p = default_params() if params is None else params
    code_table, od_table = _colour_tables((float(p["stained_od_min"]), tuple(float(v) for v in p["plane_normal"]),
                                           *(float(v) for v in p["hue_range_deg"]), float(p["off_plane_deg"]),
                                           float(p["eosin_deg"]), float(p["dark_max_rgb"]),
                                           float(p["dense_od_min"])))
    n, h, w, _ = tiles.shape
    sums = np.empty((n, len(_COUNTERS)), np.int64)
    n_px = len(range(0, h, _STRIDE)) * len(range(0, w, _STRIDE))  # pixels sampled per tile
    starts = np.arange(0, n_px, _SEGMENT_PX)  # packed sums per segment of < 4,096 pixels: no field overflows
    fine_e, coarse_e = np.empty(n), np.empty(n)
    for i in range(0, n, _CHUNK):  # a few tiles at a time: the intermediates stay in cache
        chunk = tiles[i:i + _CHUNK, ::_STRIDE, ::_STRIDE]
        index = (chunk[..., 0] >> 1).astype(np.int32)
        index <<= 7
        index |= chunk[..., 1] >> 1
        index <<= 7
        index |= chunk[..., 2] >> 1
        code = code_table[index]
        segments = np.add.reduceat(_PACKED[code].reshape(len(chunk), -1), starts, axis=1)
        sums[i:i + len(chunk)] = _unpack(segments).sum(axis=1)
        fine = _block_mean(od_table[index], 4 // _STRIDE)
        fine_e[i:i + len(chunk)] = _laplacian_energy(fine)
        coarse_e[i:i + len(chunk)] = _laplacian_energy(_block_mean(fine, 2))
    stained, off, eosin, dark, dense = (sums[:, k].astype(np.float64) for k in range(len(_COUNTERS)))
    per_stained = np.maximum(stained, 1.0)
    return {"stained": stained / n_px, "off_plane": off / per_stained, "eosin": eosin / per_stained,
            "sharpness": fine_e / np.maximum(coarse_e, 1e-9), "dark": dark / n_px, "dense": dense / per_stained}


def _unpack(packed: np.ndarray) -> np.ndarray:
    """Sums of :data:`_PACKED` -> counts in a new last axis: stained, outside the region, eosin side, dark, dense."""
    return np.stack([(packed >> (_BITS * k)) & _SEGMENT_PX for k in range(len(_COUNTERS))], axis=-1)


def check_ratios(stats: dict[str, np.ndarray], params: dict) -> np.ndarray:
    """(N, len(CHECKS)) ratio of each statistic to its threshold, > 1 = that check fails."""
    cols = []
    for stat, key, kind in CHECKS.values():
        value, limit = stats[stat], float(params[key])
        cols.append(limit / np.maximum(value, _FLOOR) if kind == "min" else value / limit)
    return np.clip(np.stack(cols, axis=1), 0.0, SCORE_MAX)


def tile_check_scores(tiles: np.ndarray, params: dict | None = None) -> np.ndarray:
    """Score per tile (float32, > 1 = not H&E tissue): the worst of the six checks' ratios to their thresholds."""
    p = default_params() if params is None else params
    return check_ratios(tile_statistics(tiles, p), p).max(axis=1).astype(np.float32)


def tile_check_reasons(tiles: np.ndarray, params: dict | None = None) -> list[str]:
    """Per tile, the check that decided its score (one of :data:`CHECKS`), or ``"ok"`` when all pass."""
    p = default_params() if params is None else params
    ratios = check_ratios(tile_statistics(tiles, p), p)
    names = list(CHECKS)
    return [names[i] if r[i] > 1.0 else "ok" for r, i in zip(ratios, ratios.argmax(axis=1), strict=True)]
