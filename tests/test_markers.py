"""The marker knowledge base validates, covers every stain the sample sheet uses, and refuses bad entries."""

from __future__ import annotations

import copy
import csv

import pytest
import yaml

from conftest import ROOT, SAMPLE_SHEET
from pipeline.config import known_stains
from pipeline.errors import ConfigError
from pipeline.ihc.markers import check_markers, is_nuclear, load_markers, marker_entry

KB_PATH = ROOT / "configs" / "markers.yaml"


@pytest.fixture(scope="module")
def kb():
    return load_markers(KB_PATH)


def test_knowledge_base_validates(kb):
    assert kb["version"] == 1 and len(kb["markers"]) >= 20
    for name, entry in kb["markers"].items():
        assert entry["pitfalls"] and entry["sources"], name
        assert entry["reading"]["positive_at"] >= 0, name
    # the markers the mission names, with the lineage each supports
    expect = {"CK_AE1AE3": "carcinoma", "CK7": "carcinoma", "CK20": "carcinoma", "EMA": "carcinoma",
              "p40": "carcinoma", "p63": "carcinoma", "ER": "carcinoma", "PR": "carcinoma", "GATA3": "carcinoma",
              "GCDFP15": "carcinoma", "TTF1": "carcinoma", "desmin": "sarcoma", "SMA": "sarcoma",
              "CD34": "sarcoma", "S100": "melanocytic", "SOX10": "melanocytic", "p16": "none", "Ki67": "none"}
    assert {m: kb["markers"][m]["supports"] for m in expect} == expect
    assert kb["markers"]["CK_AE1AE3"]["pan_keratin"] is True
    assert is_nuclear(kb["markers"]["ER"]) and not is_nuclear(kb["markers"]["desmin"])
    assert kb["markers"]["ER"]["reading"] == {**kb["markers"]["ER"]["reading"], "metric": "nuclei_positive_pct",
                                              "positive_at": 1, "low_positive_below": 10}


def test_pitfalls_the_triage_relies_on_are_written_down(kb):
    text = yaml.safe_dump(kb["markers"]).lower()
    for phrase in ("epithelioid sarcoma", "synovial sarcoma", "melanoma", "myoepithelial", "ck7/ck20",
                   "uterine smooth-muscle", "vessel walls"):
        assert phrase in text, phrase


def test_every_sample_sheet_stain_is_known(kb):
    stains = known_stains(KB_PATH)
    assert stains == {"HE", *kb["markers"]}
    if not SAMPLE_SHEET.is_file():
        pytest.skip("configs/samples.tsv not generated yet (make slides)")
    with open(SAMPLE_SHEET, newline="") as fh:
        used = {row["stain"] for row in csv.DictReader(fh, delimiter="\t")}
    assert used <= stains, used - stains


def test_every_source_is_cited_and_no_urls_invented(kb):
    cited = {s for e in kb["markers"].values() for s in e["sources"]}
    cited |= {s for p in kb["site_patterns"] for s in p["sources"]}
    assert cited == set(kb["sources"])  # no unused and no missing sources
    assert "http" not in KB_PATH.read_text()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda kb: kb["markers"]["ER"].update(sources=["nobody_2099"]), "unknown source key"),
    (lambda kb: kb["markers"]["desmin"]["reading"].update(metric="nuclei_positive_pct"), "needs a nuclear"),
    (lambda kb: kb["site_patterns"][0]["any_of"].append("CK19000"), "unknown marker"),
    (lambda kb: kb["markers"]["ER"]["reading"].update(low_positive_below=0.5), "low_positive_below"),
])
def test_cross_reference_errors(kb, edit, message):
    bad = copy.deepcopy(kb)
    edit(bad)
    with pytest.raises(ConfigError, match=message):
        check_markers(bad)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda kb: kb["markers"]["ER"].update(compartment="nucleolar"), "markers.ER.compartment"),
    (lambda kb: kb["markers"]["ER"].pop("pitfalls"), "'pitfalls' is a required property"),
    (lambda kb: kb["markers"]["ER"].update(weight=3), "markers.ER.weight"),
    (lambda kb: kb["markers"].update({"HE": kb["markers"]["ER"]}), "markers"),
])
def test_schema_errors(tmp_path, kb, edit, message):
    raw = yaml.safe_load(KB_PATH.read_text())
    edit(raw)
    path = tmp_path / "markers.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_markers(path)


def test_unknown_marker_and_unreadable_file(tmp_path, kb):
    with pytest.raises(ConfigError, match="unknown marker 'CK19000'; known markers: "):
        marker_entry(kb, "CK19000")
    with pytest.raises(ConfigError, match="cannot read"):
        load_markers(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("markers: [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_markers(tmp_path / "bad.yaml")
