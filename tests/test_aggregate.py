"""Slide-call rules (pipeline/he/slide_call.py): each call and each reason to refer, on small made-up tile sets."""

import numpy as np
import pytest

from pipeline.he.slide_call import CALLS, DEFAULT_PARAMS, NO_TUMOUR_HELP, call_slide

TILE_MM2 = 0.224 * 0.224  # a 224 px tile at 1 um/px


def tiles(n_carcinoma=0, n_sarcoma=0, n_normal=100, p=0.9):
    """Probabilities for tiles that are clearly carcinoma, sarcoma or non-tumour (p = the winning class)."""
    rest = (1 - p) / 2
    rows = [(p, rest, rest)] * n_carcinoma + [(rest, p, rest)] * n_sarcoma + [(rest, rest, p)] * n_normal
    a = np.array(rows, np.float64).reshape(-1, 3)
    return {"carcinoma": a[:, 0], "sarcoma": a[:, 1], "non_tumour": a[:, 2]}


def call(probs, ood=None, qc="ok", tissue_mm2=None, **params):
    n = len(probs["carcinoma"])
    return call_slide(probs, ood, qc, n * TILE_MM2 if tissue_mm2 is None else tissue_mm2, TILE_MM2,
                      {**DEFAULT_PARAMS, **params})


def test_carcinoma():
    r = call(tiles(n_carcinoma=40, n_normal=60))
    assert r["call"] == "carcinoma" and r["confidence"] >= 0.8
    assert r["tumour_burden"] == pytest.approx(0.4)
    assert r["burden"]["carcinoma"]["tiles"] == 40 and r["burden"]["sarcoma"]["tiles"] == 0
    assert r["tumour_area_mm2"] == pytest.approx(40 * TILE_MM2, abs=1e-3)
    assert r["lineage_score"] > 0.9 and "carcinoma" in r["reason"]
    assert set(r["top_tiles"]["carcinoma"]) <= set(range(40))


def test_sarcoma():
    r = call(tiles(n_sarcoma=30, n_normal=70))
    assert r["call"] == "sarcoma" and r["lineage_score"] < 0.1
    assert set(r["top_tiles"]["sarcoma"]) <= set(range(30))


def test_no_tumour():
    r = call(tiles(n_normal=200))
    assert r["call"] == "no_tumour" and r["confidence"] >= 0.8 and r["n_tumour_tiles"] == 0
    assert "no tumour" in r["reason"]


def test_mixed_signal_refers():
    r = call(tiles(n_carcinoma=20, n_sarcoma=15, n_normal=65))
    assert r["call"] == "refer" and "mixed" in r["reason"]
    assert r["leading_call"] == "carcinoma"


def test_qc_failure_refers():
    r = call(tiles(n_carcinoma=50, n_normal=50), qc="failed")
    assert r["call"] == "refer" and "QC failed" in r["reason"] and r["confidence"] == 1.0


def test_qc_warning_is_mentioned():
    r = call(tiles(n_carcinoma=50, n_normal=50), qc="warn")
    assert r["call"] == "carcinoma" and "QC warnings" in r["reason"]


def test_too_little_tissue_refers():
    r = call(tiles(n_carcinoma=3, n_normal=1))
    assert r["call"] == "refer" and "too little tissue" in r["reason"]
    r = call(tiles(n_carcinoma=40, n_normal=60), tissue_mm2=0.05)
    assert r["call"] == "refer" and "too little tissue" in r["reason"]


def test_empty_slide_refers():
    r = call({"carcinoma": np.zeros(0), "sarcoma": np.zeros(0), "non_tumour": np.zeros(0)}, tissue_mm2=0.0)
    assert r["call"] == "refer" and r["n_tiles"] == 0


def test_tissue_unlike_training_data_refers():
    probs = tiles(n_carcinoma=40, n_normal=60)
    ood = np.r_[np.full(40, 3.0), np.full(60, 0.5)]  # every tumour tile is unlike the training data
    r = call(probs, ood)
    assert r["call"] == "refer" and "unlike the training data" in r["reason"]
    assert r["leading_call"] == "carcinoma" and r["ood_tumour_fraction"] == 1.0
    assert set(r["top_tiles"]["ood"]) <= set(range(40))
    r = call(tiles(n_normal=100), np.full(100, 2.0))
    assert r["call"] == "refer" and r["leading_call"] == "no_tumour"


def test_in_distribution_ood_scores_do_not_change_the_call():
    assert call(tiles(n_carcinoma=40, n_normal=60), np.full(100, 0.5))["call"] == "carcinoma"


def test_borderline_burden_refers():
    r = call(tiles(n_carcinoma=3, n_normal=97))  # 3 % tumour, 0.15 mm2: neither clearly tumour nor clearly none
    assert r["call"] == "refer" and "borderline" in r["reason"]


def test_single_stray_tile_on_a_large_slide_is_no_tumour():
    r = call(tiles(n_carcinoma=1, n_normal=400))
    assert r["call"] == "no_tumour"


def test_low_confidence_refers():
    # weak tiles (P = 0.55): a lineage score of 0.71 refers before the confidence gate is reached
    r = call(tiles(n_carcinoma=40, n_normal=60, p=0.55))
    assert r["call"] == "refer" and r["leading_call"] == "carcinoma" and r["confidence"] < 0.5
    r = call(tiles(n_carcinoma=40, n_normal=60), min_confidence=0.99)
    assert r["call"] == "refer" and "low confidence" in r["reason"]


def test_unsure_no_tumour_refers_and_says_what_would_help():
    probs = tiles(n_normal=100, p=0.55)  # no tile reaches the tumour threshold, but P(non-tumour) is only 0.55
    assert call(probs)["call"] == "no_tumour"
    r = call(probs, min_confidence=0.6)
    assert r["call"] == "refer" and r["leading_call"] == "no_tumour" and "low confidence" in r["reason"]
    assert r["would_help"] == [NO_TUMOUR_HELP] and r["reason"].endswith(NO_TUMOUR_HELP)
    assert "IHC (pan-keratin, desmin)" in NO_TUMOUR_HELP


@pytest.mark.parametrize("n_ood,expected", [(0, "no_tumour"), (2, "no_tumour"), (3, "refer"), (10, "refer")])
def test_no_tumour_tolerates_at_most_two_percent_unfamiliar_tiles(n_ood, expected):
    ood = np.r_[np.full(n_ood, 2.0), np.full(100 - n_ood, 0.5)]  # OOD score > 1: unlike the training data
    r = call(tiles(n_normal=100), ood)
    assert DEFAULT_PARAMS["no_tumour_ood_max_fraction"] == 0.02
    assert r["call"] == expected, r["reason"]
    if expected == "refer":
        assert "unlike the training data" in r["reason"] and "cannot rule tumour out" in r["reason"]
        assert r["would_help"] == [NO_TUMOUR_HELP] and r["leading_call"] == "no_tumour"
    else:
        assert r["would_help"] == []


def test_unfamiliar_tiles_outside_the_tumour_keep_a_tumour_call():
    ood = np.r_[np.full(40, 0.5), np.full(10, 2.0), np.full(50, 0.5)]  # 10 % of tiles, none of them tumour
    assert call(tiles(n_carcinoma=40, n_normal=60), ood)["call"] == "carcinoma"


@pytest.mark.parametrize("seed", range(20))
def test_every_call_has_reason_and_confidence(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 300))
    raw = rng.dirichlet([0.5, 0.5, 1.0], size=n)
    probs = {"carcinoma": raw[:, 0], "sarcoma": raw[:, 1], "non_tumour": raw[:, 2]}
    r = call(probs, rng.exponential(0.7, n) if seed % 2 else None, qc=["ok", "warn", "failed"][seed % 3])
    assert r["call"] in CALLS and r["reason"] and 0.0 <= r["confidence"] <= 1.0
    import json

    json.dumps(r)  # JSON-ready: plain Python types only


def test_bad_input_is_a_value_error():
    with pytest.raises(ValueError, match="missing"):
        call_slide({"carcinoma": np.zeros(2)}, None, "ok", 1.0, TILE_MM2, DEFAULT_PARAMS)
    with pytest.raises(ValueError, match="one value per tile"):
        call_slide({"carcinoma": np.zeros(2), "sarcoma": np.zeros(3), "non_tumour": np.zeros(2)}, None, "ok",
                   1.0, TILE_MM2, DEFAULT_PARAMS)
