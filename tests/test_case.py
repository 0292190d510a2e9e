"""Per-case reasoning: marker patterns, pitfalls, conflicts, exclusions, what would help, priority."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from pipeline import DISCLAIMER
from pipeline.case.call import CARCINOMA, NO_TUMOUR, REFER, SARCOMA, call_case, inputs_from_summaries
from pipeline.ihc.markers import load_markers


@pytest.fixture(scope="module")
def kb():
    return load_markers(ROOT / "configs" / "markers.yaml")


def he(call="carcinoma", confidence=0.9, slide="HE1", qc="ok", burden=0.4):
    return {"slide_id": slide, "call": call, "confidence": confidence, "reason": f"CNN {call}",
            "tumour_burden": burden, "qc_status": qc, "qc_reasons": [] if qc != "failed" else ["no tissue"]}


def ihc(marker, call, value=None, slide=None, status="ok", qc="ok", mislabel=False):
    metric = "nuclei_positive_pct" if marker in {"ER", "PR", "p40", "p63", "Ki67", "SOX10", "GATA3", "TTF1"} \
        else "area_positive_pct"
    value = value if value is not None else {"positive": 60.0, "negative": 0.2, "equivocal": 4.0}.get(call)
    return {"slide_id": slide or f"S_{marker}", "marker": marker, "status": status, "call": call, "metric": metric,
            "value": value, "cutoff": 5.0, "qualifier": None, "reason": f"{marker} {call}", "qc_status": qc,
            "qc_reasons": [], "stain_check": {"probable_mislabel": mislabel, "reason": "looks like H&E"}}


def case(kb, he_calls, results, **params):
    return call_case(he_calls, results, kb, params or None, case_id="T")


def test_breast_pattern_er_gata3_keratin(kb):
    out = case(kb, [he("carcinoma")], [ihc("CK_AE1AE3", "positive"), ihc("ER", "positive", 85),
                                      ihc("GATA3", "positive", 90), ihc("desmin", "negative")])
    assert out["call"] == CARCINOMA and out["category"] == "carcinoma"
    assert out["suggested_primary"].startswith("breast")
    assert out["primary_candidates"][0]["supported_by"] == ["ER", "GATA3"]
    assert out["priority"]["rank"] == 1 and out["conflicts"] == []
    assert out["disclaimer"] == DISCLAIMER
    # every slide's finding is listed with what it supports
    supports = {(e["stain"], e["supports"]) for e in out["evidence"]}
    assert {("HE", "carcinoma"), ("CK_AE1AE3", "carcinoma"), ("ER", "carcinoma"),
            ("desmin", "against myoid differentiation (weak)")} <= supports


def test_squamous_p40_keratin_cervix_among_candidates(kb):
    out = case(kb, [he("carcinoma")], [ihc("CK_AE1AE3", "positive"), ihc("p40", "positive", 80)])
    assert out["call"] == CARCINOMA
    assert out["primary_candidates"][0]["site"] == "squamous"
    assert "cervix" in out["suggested_primary"]
    assert any(h.startswith("p16") for h in out["would_help"])
    # with block-type p16 the HPV-associated (cervix) pattern ranks first
    out = case(kb, [he("carcinoma")], [ihc("CK_AE1AE3", "positive"), ihc("p40", "positive", 80),
                                      ihc("p16", "positive", 90)])
    assert out["primary_candidates"][0]["site"] == "cervix"
    assert "cervix" in out["suggested_primary"]


def test_lung_pattern(kb):
    out = case(kb, [he("carcinoma")], [ihc("CK_AE1AE3", "positive"), ihc("TTF1", "positive", 70)])
    assert out["call"] == CARCINOMA and out["primary_candidates"][0]["site"] == "lung"


def test_leiomyosarcoma_pattern(kb):
    out = case(kb, [he("sarcoma")], [ihc("desmin", "positive"), ihc("SMA", "positive"),
                                    ihc("CK_AE1AE3", "negative")])
    assert out["call"] == SARCOMA and out["category"] == "sarcoma"
    assert out["lineage_scores"]["pan_keratin"] == "negative"
    assert out["priority"]["rank"] == 1 and out["suggested_primary"] is None  # a tumour call: seen first


def test_keratin_positive_with_he_sarcoma_is_a_conflict(kb):
    out = case(kb, [he("sarcoma")], [ihc("CK_AE1AE3", "positive")])
    assert out["call"] == REFER and out["category"] == "conflict"
    assert [c["rule"] for c in out["conflicts"]] == ["he_sarcoma_keratin"]
    assert "synovial" in out["conflicts"][0]["description"]
    assert out["priority"]["rank"] == 1
    assert "CK_AE1AE3" in out["pitfalls"]


def test_melanoma_pattern_refers(kb):
    out = case(kb, [he("carcinoma", 0.7)], [ihc("S100", "positive"), ihc("SOX10", "positive", 90),
                                           ihc("CK_AE1AE3", "negative")])
    assert out["call"] == REFER
    assert {c["rule"] for c in out["conflicts"]} == {"melanocytic", "keratin_negative_carcinoma"}
    assert any("HMB45" in h for h in out["would_help"]), out["would_help"]  # possible melanoma: say what confirms it


def test_melanoma_pattern_without_he(kb):
    out = case(kb, [], [ihc("S100", "positive"), ihc("SOX10", "positive", 90), ihc("CK_AE1AE3", "negative")])
    assert out["call"] == REFER and out["category"] == "melanocytic"
    assert any("HMB45" in h for h in out["would_help"])


def test_myoepithelial_and_epithelioid_sarcoma_patterns(kb):
    out = case(kb, [he("carcinoma")], [ihc("CK_AE1AE3", "positive"), ihc("S100", "positive")])
    assert out["call"] == REFER and "myoepithelial" in {c["rule"] for c in out["conflicts"]}
    out = case(kb, [], [ihc("CK_AE1AE3", "positive"), ihc("CD34", "positive")])
    assert out["call"] == REFER and "keratin_vascular" in {c["rule"] for c in out["conflicts"]}


def test_keratin_and_desmin_coexpression(kb):
    out = case(kb, [], [ihc("CK_AE1AE3", "positive"), ihc("desmin", "positive")])
    assert out["call"] == REFER and "coexpression" in {c["rule"] for c in out["conflicts"]}


def test_he_carcinoma_keratin_negative_refers(kb):
    out = case(kb, [he("carcinoma")], [ihc("CK_AE1AE3", "negative")])
    assert out["call"] == REFER and "keratin_negative_carcinoma" in {c["rule"] for c in out["conflicts"]}


def test_er_alone_is_not_enough_and_uterine_lms_pitfall(kb):
    # ER/PR without keratin refer (uterine leiomyosarcoma and endometrial stromal sarcoma express them), even
    # with keratin done and negative; the reason says why
    for keratin in ([], [ihc("CK_AE1AE3", "negative")]):
        out = case(kb, [he("sarcoma")], [ihc("desmin", "positive"), ihc("ER", "positive", 60), *keratin])
        assert out["call"] == REFER and "er_pr_without_keratin" in {r["id"] for r in out["rules_fired"]}
        assert "uterine leiomyosarcoma" in out["reason"]
        assert any("uterine" in n for n in out["notes"])


def test_no_ihc_says_what_would_help(kb):
    out = case(kb, [he("sarcoma", 0.9)], [])  # a sarcoma call needs keratin done and negative
    assert out["call"] == REFER and out["basis"] == "H&E"
    assert [r["id"] for r in out["rules_fired"]] == ["sarcoma_needs_keratin"]
    assert any("pan-keratin and desmin would separate" in h for h in out["would_help"])
    out = case(kb, [he("sarcoma", 0.9)], [], he_only_calls=False)
    assert out["call"] == REFER
    assert any("pan-keratin and desmin would separate" in h for h in out["would_help"])
    out = case(kb, [he("refer", 0.4)], [])
    assert out["call"] == REFER and out["priority"]["rank"] == 2


def test_no_tumour(kb):
    out = case(kb, [he("no_tumour", 0.95, burden=0.0)], [])
    assert out["call"] == NO_TUMOUR and out["priority"]["rank"] == 3 and out["would_help"] == []


def test_unsure_no_tumour_on_he_is_refer_with_what_would_help(kb):
    out = case(kb, [he("no_tumour", 0.4, burden=0.0)], [])  # below he_min_confidence (0.5)
    assert out["call"] == REFER and out["he"]["state"] == "uncertain" and out["priority"]["rank"] == 2
    assert any(h.startswith("CK_AE1AE3, desmin:") for h in out["would_help"])
    out = case(kb, [he("no_tumour", 0.4, burden=0.0)], [], he_min_confidence=0.3)
    assert out["call"] == NO_TUMOUR


def test_failed_and_mislabelled_slides_are_listed_not_used(kb):
    out = case(kb, [he("carcinoma", slide="HE1"), he("sarcoma", slide="HE2", qc="failed")],
               [ihc("CK_AE1AE3", "positive", status="failed"), ihc("desmin", "negative", mislabel=True)])
    excluded = {x["slide_id"]: x["reason"] for x in out["slides"]["excluded"]}
    assert set(excluded) == {"HE2", "S_CK_AE1AE3", "S_desmin"}
    assert "mislabel" in excluded["S_desmin"] and "QC failed" in excluded["HE2"]
    assert out["slides"]["used"] == ["HE1"]
    assert out["call"] == CARCINOMA and out["basis"] == "H&E"  # H&E only, failed slides not used
    assert any("HE2" in h for h in out["would_help"])


def test_he_slides_disagree(kb):
    out = case(kb, [he("carcinoma", slide="A"), he("sarcoma", slide="B")], [])
    assert out["call"] == REFER and out["conflicts"][0]["rule"] == "he_disagree"


def test_equivocal_is_not_used_as_positive(kb):
    out = case(kb, [he("refer", 0.3)], [ihc("CK_AE1AE3", "equivocal")])
    assert out["call"] == REFER and out["category"] == "insufficient"
    assert any("equivocal" in h for h in out["would_help"])


def test_priority_orders_the_worklist(kb):
    calls = {
        "carcinoma": case(kb, [he("carcinoma")], [ihc("CK_AE1AE3", "positive")]),
        "conflict": case(kb, [he("sarcoma")], [ihc("CK_AE1AE3", "positive")]),
        "refer": case(kb, [he("refer", 0.3)], []),
        "sarcoma": case(kb, [he("sarcoma")], [ihc("desmin", "positive"), ihc("CK_AE1AE3", "negative")]),
        "none": case(kb, [he("no_tumour", burden=0.0)], []),
    }
    order = sorted(calls, key=lambda k: calls[k]["priority"]["sort_key"])
    # every tumour call and every conflict before refer, refer before no tumour
    assert set(order[:3]) == {"carcinoma", "conflict", "sarcoma"} and order[3:] == ["refer", "none"]
    assert [calls[k]["priority"]["rank"] for k in order] == [1, 1, 1, 2, 3]


def test_inputs_from_summaries_and_cli(tmp_path, kb):
    summaries = [
        {"slide_id": "A1", "case_id": "A", "stain": "HE", "qc": {"status": "ok", "reasons": []},
         "slide_call": {"call": "carcinoma", "confidence": 0.88, "reason": "tumour tiles", "tumour_burden": 0.3}},
        {"slide_id": "A2", "case_id": "A", "stain": "CK_AE1AE3", "qc": {"status": "ok", "reasons": []},
         "ihc": {"status": "ok", "result": {"call": "positive", "metric": "area_positive_pct", "value": 41.0,
                                            "cutoff": 5.0, "qualifier": None, "reason": "x"},
                 "stain_check": {"probable_mislabel": False}}},
        {"slide_id": "A3", "case_id": "A", "stain": "ER", "qc": {"status": "ok", "reasons": []},
         "ihc": {"status": "ok", "result": {"call": "positive", "metric": "nuclei_positive_pct", "value": 70.0,
                                            "cutoff": 1.0, "qualifier": None, "reason": "y"}}},
    ]
    he_calls, results = inputs_from_summaries(summaries)
    assert [h["slide_id"] for h in he_calls] == ["A1"] and [r["marker"] for r in results] == ["CK_AE1AE3", "ER"]
    paths = []
    for s in summaries:
        path = tmp_path / f"{s['slide_id']}.json"
        path.write_text(json.dumps(s))
        paths.append(str(path))
    out = tmp_path / "case.json"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "call-case", "--case", "A", "--summaries", *paths,
                           "--config", str(ROOT / "configs" / "config.yaml"),
                           "--markers", str(ROOT / "configs" / "markers.yaml"), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["call"] == CARCINOMA and result["suggested_primary"].startswith("breast")
    assert result["case_id"] == "A"
    assert [r["id"] for r in result["rules_fired"]] == ["ihc_carcinoma"] and result["rules_fired"][0]["text"]
