"""JSON text of many rows at once, built column by column in numpy (for :mod:`pipeline.outputs.cell_geojson`,
whose hundreds of thousands of features would take seconds one ``json.dumps`` at a time).

A *block* is a ``(rows, width)`` uint8 array of UTF-8 text, each row padded with :data:`PAD` bytes (never part of
UTF-8 text: JSON writes a NUL character as ``\\u0000``); :func:`join_rows` puts blocks side by side and drops the
padding. Numbers come out as Python writes them: :func:`number_block` as ``repr(round(float(v), decimals))``
(what ``json.dumps`` writes for the rounded value), :func:`fixed_block` as ``format(float(v), f".{decimals}f")``,
:func:`int_block` as ``str(int(v))``; a value whose text the digit arithmetic here does not reproduce (NaN,
infinity, exponent notation, too many digits) is flagged for the caller to write another way.

Pure: arrays in, bytes out. Public: :func:`round_like_python`, :func:`number_block`, :func:`fixed_block`,
:func:`int_block`, :func:`text_block`, :func:`choice_block`, :func:`join_rows`.
"""

from __future__ import annotations

import numpy as np

PAD = 0
_MINUS, _POINT, _ZERO = ord("-"), ord("."), ord("0")


def _round_scaled(values, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """(``round(float(v), decimals)``, the same times ``10**decimals`` as a whole float) of every value."""
    x = np.asarray(values, np.float64)
    scale = 10.0 ** decimals
    scaled = x * scale
    whole = np.rint(scaled)  # np.round: scale, round half to even, unscale
    # Python's round is correctly rounded: it differs only where the scaled value lies within its rounding error
    # (a few units in the last place, < 1e-15 of it) of a half
    with np.errstate(invalid="ignore"):
        near_half = np.abs(scaled - whole) + np.abs(scaled) * 1e-15 >= 0.5
    for i in np.flatnonzero(near_half).tolist():
        r = round(float(x.flat[i]), decimals)
        whole.flat[i] = np.copysign(round(r * scale), r)  # keeps -0.0
    return whole / scale, whole


def round_like_python(values, decimals: int) -> np.ndarray:
    """``round(float(v), decimals)`` of every value, as float64 (``decimals`` >= 0): ``np.round`` except where
    the scaled value is within rounding error of a half, which are redone with Python's correctly rounded
    ``round``."""
    return _round_scaled(values, decimals)[0]


def _length(k: np.ndarray) -> np.ndarray:
    """Number of decimal digits of non-negative integers (1 for 0)."""
    return np.searchsorted(10 ** np.arange(1, 19, dtype=np.int64), k, side="right") + 1


def _decimal_block(integer: np.ndarray, negative: np.ndarray, fraction: np.ndarray | None = None,
                   decimals: int = 0, kept: np.ndarray | None = None) -> np.ndarray:
    """Rows ``[-]integer[.fraction]``: ``integer`` >= 0 without leading zeros, then (``decimals`` > 0) the first
    ``kept`` of the ``decimals`` digits of ``fraction`` (an integer below ``10**decimals``). Built a character
    position at a time over all rows (fast in numpy), returned as a (rows, width) view."""
    length = _length(integer)
    width = int(length.max()) if len(integer) else 1
    out = np.empty((1 + width + (1 + decimals if decimals else 0), len(integer)), np.uint8)
    out[0] = np.where(negative, _MINUS, PAD)
    q = integer
    for j in range(width):  # j-th digit from the right
        q, digit = np.divmod(q, 10)
        out[width - j] = np.where(length > j, digit + _ZERO, PAD)
    if decimals:
        out[width + 1] = _POINT
        q = fraction
        for j in range(decimals - 1, -1, -1):
            q, digit = np.divmod(q, 10)
            out[width + 2 + j] = digit + _ZERO if kept is None else np.where(kept > j, digit + _ZERO, PAD)
    return out.T


def _scaled_ints(values, decimals: int, max_abs: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rounded values, their absolute value times ``10**decimals`` as int64, ok: finite and below max_abs)."""
    v, whole = _round_scaled(values, decimals)
    with np.errstate(invalid="ignore"):
        ok = np.abs(v) < max_abs  # False for NaN
    return v, np.where(ok, np.abs(whole), 0).astype(np.int64), ok


def number_block(values, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """(block, ok): ``repr(round(float(v), decimals))`` of each value (``decimals`` >= 1), and where it is right.

    The digits are those of the decimal ``k / 10**decimals`` nearest the value with trailing zeros dropped (one
    kept after the point), which is ``repr``'s shortest round-trip form wherever the value is 0 or between 1e-4
    (``repr`` writes exponents below) and ``10**(15 - decimals)`` (its spacing finer than the last decimal)."""
    v, k, ok = _scaled_ints(values, decimals, 10.0 ** (15 - decimals))
    ok &= (k >= 10 ** decimals // 10 ** 4) | (k == 0)  # |v| >= 1e-4
    integer, fraction = np.divmod(k, 10 ** decimals)
    kept = np.full(len(k), decimals)  # fraction digits written: trailing zeros dropped, one kept
    for j in range(1, decimals):
        kept[fraction % 10 ** j == 0] = decimals - j
    return _decimal_block(integer, np.signbit(v) & ok, fraction, decimals, kept), ok


def fixed_block(values, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """(block, ok): ``format(float(v), f".{decimals}f")`` of each value (``decimals`` >= 1), and where it is
    right (finite and below ``10**(15 - decimals)``)."""
    v, k, ok = _scaled_ints(values, decimals, 10.0 ** (15 - decimals))
    integer, fraction = np.divmod(k, 10 ** decimals)
    return _decimal_block(integer, np.signbit(v) & ok, fraction, decimals), ok


def int_block(values) -> np.ndarray:
    """``str(int(v))`` of each integer value."""
    v = np.asarray(values).astype(np.int64)
    return _decimal_block(np.abs(v), v < 0)


def text_block(text: str, rows: int) -> np.ndarray:
    """The same text on every row."""
    encoded = np.frombuffer(text.encode(), np.uint8)
    return np.broadcast_to(encoded, (rows, len(encoded)))


def choice_block(texts: list[str], index) -> np.ndarray:
    """Row i: ``texts[index[i]]``."""
    encoded = [t.encode() for t in texts]
    table = np.full((len(encoded), max(map(len, encoded))), PAD, np.uint8)
    for i, e in enumerate(encoded):
        table[i, :len(e)] = np.frombuffer(e, np.uint8)
    return table[np.asarray(index, np.intp)]


def join_rows(blocks: list[np.ndarray], separator: bytes) -> bytes:
    """The rows' text, padding dropped, ``separator`` between rows (for splitting: one no row contains)."""
    rows = np.concatenate([*blocks, np.broadcast_to(np.frombuffer(separator, np.uint8),
                                                    (len(blocks[0]), len(separator)))], axis=1)
    return rows[rows != PAD].tobytes()[:-len(separator)]
