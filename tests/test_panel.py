"""Panel reasoning: classic and pitfall panels through call_case and the `panel` verb, each with one call."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from pipeline import DISCLAIMER
from pipeline.__main__ import main
from pipeline.case.call import CARCINOMA, NO_TUMOUR, REFER, SARCOMA, call_case
from pipeline.case.panel_rules import check_rules, load_rules
from pipeline.errors import ConfigError
from pipeline.ihc.markers import load_markers

P, N, E, F = "positive", "negative", "equivocal", "failed"

# (name, --he, {marker: result}, the one expected call, rules that must fire)
PANELS = [
    # the cases (each was a confident wrong call before the rules table)
    ("keratin-neg ER+ PR+ GATA3+", "none", {"CK_AE1AE3": N, "ER": P, "PR": P, "GATA3": P}, REFER,
     {"er_pr_without_keratin", "keratin_negative_carcinoma"}),
    ("keratin-neg ER+ PR+ GATA3+, H&E carcinoma", "carcinoma", {"CK_AE1AE3": N, "ER": P, "PR": P, "GATA3": P},
     REFER, {"er_pr_without_keratin", "keratin_negative_carcinoma"}),
    ("ER+ PR+, keratin not done", "carcinoma", {"ER": P, "PR": P}, REFER, {"er_pr_without_keratin"}),
    ("keratin+ HMB45+", "carcinoma", {"CK_AE1AE3": P, "HMB45": P}, REFER, {"melanocytic"}),
    ("keratin+ Melan-A+", "carcinoma", {"CK_AE1AE3": P, "MelanA": P}, REFER, {"melanocytic"}),
    ("keratin+ CD31+", "carcinoma", {"CK_AE1AE3": P, "CD31": P}, REFER, {"keratin_vascular"}),
    ("keratin+ ERG+", "carcinoma", {"CK_AE1AE3": P, "ERG": P}, REFER, {"keratin_vascular"}),
    ("desmin alone, keratin not done", "none", {"desmin": P}, REFER, {"sarcoma_needs_keratin"}),
    ("desmin alone, H&E sarcoma", "sarcoma", {"desmin": P}, REFER, {"sarcoma_needs_keratin"}),
    ("desmin+, keratin slide failed", "sarcoma", {"desmin": P, "CK_AE1AE3": F}, REFER, {"sarcoma_needs_keratin"}),
    ("H&E sarcoma, CK7 negative only", "sarcoma", {"CK7": N}, REFER, {"sarcoma_needs_keratin"}),
    # classic pairs
    ("breast ductal", "carcinoma", {"CK_AE1AE3": P, "CK7": P, "GATA3": P, "ER": P}, CARCINOMA, {"ihc_carcinoma"}),
    ("cervical squamous", "carcinoma", {"CK_AE1AE3": P, "p40": P, "p16": P}, CARCINOMA, {"ihc_carcinoma"}),
    ("lung adenocarcinoma", "carcinoma", {"CK_AE1AE3": P, "CK7": P, "TTF1": P}, CARCINOMA, {"ihc_carcinoma"}),
    ("lung adenocarcinoma, CK7 as the keratin", "none", {"CK7": P, "TTF1": P}, CARCINOMA, {"ihc_carcinoma"}),
    ("leiomyosarcoma", "sarcoma", {"desmin": P, "SMA": P, "h_caldesmon": P, "CK_AE1AE3": N}, SARCOMA,
     {"ihc_sarcoma"}),
    ("melanoma", "none", {"S100": P, "SOX10": P, "CK_AE1AE3": N}, REFER, {"melanocytic"}),
    ("melanoma read as carcinoma on H&E", "carcinoma", {"S100": P, "SOX10": P, "CK_AE1AE3": N}, REFER,
     {"melanocytic", "keratin_negative_carcinoma"}),
    ("lymphoma", "none", {"CD45": P, "CK_AE1AE3": N}, REFER, {"haematolymphoid"}),
    ("myoepithelial: keratin + S100", "carcinoma", {"CK_AE1AE3": P, "S100": P}, REFER, {"myoepithelial"}),
    ("myoepithelial: keratin + SMA + p63", "none", {"CK_AE1AE3": P, "SMA": P, "p63": P}, REFER, {"myoepithelial"}),
    ("synovial sarcoma: keratin and EMA", "sarcoma", {"CK_AE1AE3": P, "EMA": P}, REFER, {"he_sarcoma_keratin"}),
    ("synovial sarcoma: EMA only", "sarcoma", {"CK_AE1AE3": N, "EMA": P}, REFER, {"he_sarcoma_keratin"}),
    ("epithelioid sarcoma", "none", {"CK_AE1AE3": P, "CD34": P}, REFER, {"keratin_vascular"}),
    ("angiosarcoma", "sarcoma", {"CD31": P, "ERG": P, "CK_AE1AE3": N}, SARCOMA, {"ihc_sarcoma"}),
    ("keratin + desmin co-expression", "none", {"CK_AE1AE3": P, "desmin": P}, REFER, {"coexpression"}),
    ("H&E carcinoma, no IHC", "carcinoma", {}, CARCINOMA, {"he_carcinoma"}),
    ("H&E carcinoma, keratin negative", "carcinoma", {"CK_AE1AE3": N}, REFER, {"keratin_negative_carcinoma"}),
    ("H&E sarcoma, no IHC", "sarcoma", {}, REFER, {"sarcoma_needs_keratin"}),
    ("H&E sarcoma, keratin negative", "sarcoma", {"CK_AE1AE3": N}, SARCOMA, {"he_sarcoma"}),
    ("H&E no tumour, no IHC", "no_tumour", {}, NO_TUMOUR, {"he_no_tumour"}),
    ("H&E no tumour, keratin positive", "no_tumour", {"CK_AE1AE3": P}, REFER, {"he_no_tumour_ihc_positive"}),
    ("nothing usable", "none", {}, REFER, {"no_usable_slide"}),
    ("H&E uncertain, keratin equivocal", "uncertain", {"CK_AE1AE3": E}, REFER, {"insufficient"}),
]
IDS = [p[0] for p in PANELS]


@pytest.fixture(scope="module")
def kb():
    return load_markers(ROOT / "configs" / "markers.yaml")


def _he(state: str) -> list[dict]:
    if state == "none":
        return []
    call = "refer" if state == "uncertain" else state
    return [{"slide_id": "HE1", "call": call, "confidence": 0.3 if call == "refer" else 0.9, "reason": f"CNN {call}",
             "tumour_burden": 0.3, "qc_status": "ok", "qc_reasons": []}]


def _ihc(marker: str, result: str) -> dict:
    failed = result == F
    return {"slide_id": f"S_{marker}", "marker": marker, "status": "failed" if failed else "ok",
            "call": None if failed else result, "metric": "area_positive_pct", "value": 50.0, "cutoff": 5.0,
            "qualifier": None, "reason": "slide blurred" if failed else f"{marker} {result}", "qc_status": "ok",
            "qc_reasons": []}


def _check(out: dict, he: str, markers: dict, expected: str, rules: set[str]) -> None:
    fired = [r["id"] for r in out["rules_fired"]]
    assert out["call"] == expected, (out["reason"], fired)
    assert rules <= set(fired), fired
    assert all(r["text"] and r["sources"] for r in out["rules_fired"])
    if expected == REFER:
        assert out["would_help"], "every refer lists what would help"
    if markers.get("CK_AE1AE3") == F:  # a failed slide is named failed, never "not done"
        assert "CK_AE1AE3: quantification failed" in out["reason"] and "not done" not in out["reason"]
    if expected == CARCINOMA:  # keratin-negative never favours carcinoma
        assert markers.get("CK_AE1AE3") != N


@pytest.mark.parametrize(("name", "he", "markers", "expected", "rules"), PANELS, ids=IDS)
def test_panel_through_call_case(kb, name, he, markers, expected, rules):
    out = call_case(_he(he), [_ihc(m, r) for m, r in markers.items()], kb, case_id=name)
    _check(out, he, markers, expected, rules)


@pytest.mark.parametrize(("name", "he", "markers", "expected", "rules"), PANELS, ids=IDS)
def test_panel_through_the_verb(capsys, name, he, markers, expected, rules):
    argv = ["panel", "--he", he, "--json"] + [a for m, r in markers.items() for a in ("--marker", f"{m}={r}")]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    _check(out, he, markers, expected, rules)
    assert out["disclaimer"] == DISCLAIMER


def test_enough_panels():
    assert len(PANELS) >= 25 and len(set(IDS)) == len(IDS)


def test_desmin_alone_asks_for_keratin(kb):
    out = call_case([], [_ihc("desmin", P)], kb)
    assert out["call"] == REFER and out["lineage_scores"]["pan_keratin"] == "not done"
    assert out["would_help"][0].startswith("CK_AE1AE3")
    out = call_case([], [_ihc("desmin", P), _ihc("CK_AE1AE3", F)], kb)
    assert out["lineage_scores"]["pan_keratin"] == "failed" and "keratin failed (CK_AE1AE3" in out["reason"]


def test_pitfall_rules_all_fire_and_the_first_gives_the_category(kb):
    out = call_case(_he("carcinoma"), [_ihc("CK_AE1AE3", P), _ihc("S100", P), _ihc("CD34", P)], kb)
    fired = [r["id"] for r in out["rules_fired"]]
    assert fired == ["melanocytic", "myoepithelial", "keratin_vascular"]  # in stated order; no call rule
    assert out["category"] == "melanocytic" and out["priority"]["rank"] == 1
    assert [c["rule"] for c in out["conflicts"]] == fired


def test_text_output_names_call_rules_help_and_disclaimer(capsys):
    assert main(["panel", "--he", "carcinoma", "--marker", "CK_AE1AE3=positive", "--marker", "CD31=positive"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("call: refer")
    assert "keratin_vascular" in text and "epithelioid angiosarcoma" in text
    assert "would help:" in text and "INI1" in text and DISCLAIMER in text


def test_marker_names_match_ignoring_case_and_punctuation(capsys):
    assert main(["panel", "--he", "carcinoma", "--marker", "ck_ae1ae3=Positive", "--marker", "Melan-A=positive",
                 "--marker", "TTF-1=negative", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {e["stain"] for e in out["evidence"]} >= {"CK_AE1AE3", "MelanA", "TTF1"}
    assert out["call"] == REFER and out["category"] == "melanocytic"


@pytest.mark.parametrize(("marker", "message"), [
    ("CK19=positive", "unknown marker 'CK19'; known markers: "),
    ("CK_AE1AE3", "expected NAME=RESULT"),
    ("CK_AE1AE3=weak", "expected NAME=RESULT"),
])
def test_bad_markers_are_refused_in_one_line(marker, message):
    proc = subprocess.run([sys.executable, "-m", "pipeline", "panel", "--he", "carcinoma", "--marker", marker],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: --marker {marker!r}" if "NAME" in message else f"error: {message}")
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    if "known markers" in message:
        assert "CK_AE1AE3" in proc.stderr and "HMB45" in proc.stderr


def test_panel_verb_does_not_import_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline", "panel", "--he", "sarcoma",
                           "--marker", "desmin=positive", "--marker", "CK_AE1AE3=negative"],
                          capture_output=True, text=True, cwd=tmp_path,  # from any directory
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"call: {SARCOMA}")
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "torch" not in imported and "numpy" not in imported


# ---- the rules table itself ------------------------------------------------------------------------------
RULES_PATH = ROOT / "configs" / "panel_rules.yaml"


def _rule(table: dict, rule_id: str) -> dict:
    return next(r for r in table["rules"] if r["id"] == rule_id)


def test_shipped_table_is_valid_and_readable(kb):
    table = load_rules(RULES_PATH, kb)
    rules = sorted(table["rules"], key=lambda r: r["order"])
    assert len(rules) >= 15 and rules[-1]["when"] == {}
    for rule in rules:
        assert rule["pitfall"] and rule["sources"] and set(rule["sources"]) <= set(kb["sources"]), rule["id"]
        if rule["call"] == REFER:
            assert rule["would_help"], rule["id"]
    assert set(table["groups"]["melanocytic"]["markers"]) == {"S100", "SOX10", "HMB45", "MelanA"}
    assert set(table["groups"]["vascular"]["markers"]) == {"CD31", "ERG", "CD34"}


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t["groups"]["keratin"]["markers"].append("CK19000"), "groups.keratin: unknown marker"),
    (lambda t: _rule(t, "melanocytic")["when"].update(melanotic=["positive"]), "unknown group or marker"),
    (lambda t: _rule(t, "ihc_sarcoma").update(category="carcinoma"), "does not go with call"),
    (lambda t: _rule(t, "melanocytic").update(sources=["nobody_2099"]), "unknown source key"),
    (lambda t: _rule(t, "melanocytic").update(says="{keratine} positive"), "unknown placeholder"),
    (lambda t: _rule(t, "melanocytic").update(would_help=[{"stains": ["HMB45"], "why": "melanoma"}]),
     "outside the marker knowledge base"),
    (lambda t: _rule(t, "insufficient").update(when={"he": ["none"]}), "must match every case"),
    (lambda t: _rule(t, "melanocytic").update(order=999), "must come before the call rules"),
    (lambda t: _rule(t, "haematolymphoid").update(id="melanocytic"), "duplicate id"),
])
def test_cross_reference_errors(kb, edit, message):
    table = copy.deepcopy(load_rules(RULES_PATH, kb))
    edit(table)
    with pytest.raises(ConfigError, match=message):
        check_rules(table, kb)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t["rules"][1].update(call=CARCINOMA), r"rules\.1\.call"),  # a pitfall rule always refers
    (lambda t: t["rules"][1]["when"].update(keratin=["absent"]), r"rules\.1\.when\.keratin"),
    (lambda t: t["rules"][1].pop("pitfall"), "'pitfall' is a required property"),
])
def test_schema_errors(tmp_path, kb, edit, message):
    raw = yaml.safe_load(RULES_PATH.read_text())
    edit(raw)
    path = tmp_path / "panel_rules.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_rules(path, kb)
