"""pipeline/outputs/json_columns.py: numbers written a column at a time are Python's own text of them."""

from __future__ import annotations

import numpy as np

from pipeline.outputs.json_columns import (
    PAD,
    choice_block,
    fixed_block,
    int_block,
    join_rows,
    number_block,
    round_like_python,
    text_block,
)


def _texts(block: np.ndarray) -> list[str]:
    return [row[row != PAD].tobytes().decode() for row in block]


def _values() -> np.ndarray:
    rng = np.random.default_rng(0)
    edges = [0.0, -0.0, 1e-4, 9.9999e-5, 5e-05, 0.285, 2.675, 1.005, 0.125, 0.375, -0.004, -0.005, 1e9, 123456.7,
             np.nan, np.inf, -np.inf, 1e300]
    return np.concatenate([edges, rng.uniform(-1e5, 1e5, 3000), rng.lognormal(0, 4, 3000),
                           np.arange(-300, 300) / 200 + 0.005, np.arange(-300, 300) / 2000 + 0.0005])


def test_numbers_are_reprs_of_python_rounding():
    values = _values()
    for decimals in (1, 2, 3, 6):
        rounded = round_like_python(values, decimals)
        expected = [round(float(v), decimals) for v in values]
        assert np.array_equal(rounded, expected, equal_nan=True)
        assert np.array_equal(np.signbit(rounded), np.signbit(expected))
        block, ok = number_block(values, decimals)
        written = [w for w, o in zip(_texts(block), ok, strict=True) if o]
        assert written == [repr(round(float(v), decimals)) for v, o in zip(values, ok, strict=True) if o]
        with np.errstate(invalid="ignore"):  # left to the caller: only NaN, infinity, exponents, long numbers
            plain = (np.abs(values) < 10.0 ** (15 - decimals)) & ((np.abs(values) >= 1e-4) | (values == 0))
        assert ok[plain].all() and not ok[~np.isfinite(values)].any()
        block, ok = fixed_block(values, decimals)
        assert [w for w, o in zip(_texts(block), ok, strict=True) if o] == \
            [f"{float(v):.{decimals}f}" for v, o in zip(values, ok, strict=True) if o]
        assert ok[np.isfinite(values) & (np.abs(values) < 1e8)].all()


def test_integers_text_and_joined_rows():
    ints = np.array([0, 7, -7, 10, 99, -100, 123456789], np.int64)
    assert _texts(int_block(ints)) == [str(int(v)) for v in ints]
    rows = join_rows([text_block("a", 3), choice_block(["x", "yy", "µ"], [2, 0, 1]), int_block([1, -20, 300])], b",")
    assert rows.decode() == "aµ1,ax-20,ayy300"
