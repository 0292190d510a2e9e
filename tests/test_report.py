"""Cohort outputs: worklist order and rows, the HTML page, run metadata, the rules under Snakemake and its report."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_summary import SLIDES, make_mini_cohort, make_slides, run_stages

from conftest import ROOT
from pipeline import DISCLAIMER
from pipeline.outputs.report_html import render_html
from pipeline.outputs.results_check import check_results
from pipeline.outputs.worklist import worklist_rows, worklist_tsv


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SLIDE_TRIAGE_GIT_COMMIT", "0" * 40)
    yield make_mini_cohort(tmp_path_factory.mktemp("mini_report"))
    mp.undo()


def _summary(case_id, slide_id, stain="HE", status="ok", call="carcinoma", reason=""):
    s = {"case_id": case_id, "slide_id": slide_id, "stain": stain, "kind": "HE" if stain == "HE" else "IHC",
         "status": status, "reason": reason}
    if stain == "HE":
        s["slide_call"] = {"call": call, "confidence": 0.8, "reason": f"{call} because"}
    else:
        s["ihc"] = {"result": {"call": call, "metric": "area_positive_pct", "value": 12.5, "cutoff": 5.0,
                               "reason": "r"}}
    return s


def _case(case_id, call, rank, sort_key=None):
    return {"case_id": case_id, "call": call, "reason": f"{call} reason",
            "priority": {"rank": rank, "sort_key": rank + 0.5 if sort_key is None else sort_key}}


# ---- worklist ordering ----------------------------------------------------------------------------------
def test_worklist_puts_tumour_calls_and_conflicts_first_then_refer_then_no_tumour():
    cases = {"NOT": _case("NOT", "no tumour", 3), "SAR": _case("SAR", "favours sarcoma", 1, 1.4),
             "REF": _case("REF", "refer", 2), "MET": _case("MET", "favours metastatic carcinoma", 1, 1.6),
             "CON": _case("CON", "refer", 1, 1.2)}
    summaries = [_summary(c, f"{c}_HE") for c in cases]
    rows = worklist_rows(cases, summaries)
    assert [r["case_id"] for r in rows if r["level"] == "case"] == ["CON", "SAR", "MET", "REF", "NOT"]
    assert [r["order"] for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) == 2 * len(cases)


def test_sarcoma_ranks_before_refer_from_the_call_or_category_alone():
    bare = {c: {"case_id": c, "call": call, "reason": "r"} for c, call in
            (("NOT", "no tumour"), ("REF", "refer"), ("SAR", "favours sarcoma"))}
    rows = worklist_rows(bare, [_summary(c, f"{c}_HE") for c in bare])
    assert [(r["case_id"], r["priority"]) for r in rows if r["level"] == "case"] == [("SAR", 1), ("REF", 2),
                                                                                    ("NOT", 3)]
    # a case.json from an older version (sarcoma ranked 3) sorts by today's rule for its category
    stale = {"SAR": {**_case("SAR", "favours sarcoma", 3), "category": "sarcoma"}, "REF": _case("REF", "refer", 2)}
    rows = worklist_rows(stale, [_summary(c, f"{c}_HE") for c in stale])
    assert [r["case_id"] for r in rows if r["level"] == "case"] == ["SAR", "REF"]


def test_each_case_is_followed_by_its_slides_failed_first():
    cases = {"A": _case("A", "refer", 2)}
    summaries = [_summary("A", "A_ER", "ER", call="positive"), _summary("A", "A_HE"),
                 _summary("A", "A_HE2", status="failed", reason="QC failed: no tissue")]
    rows = worklist_rows(cases, summaries)
    assert [(r["level"], r["slide_id"]) for r in rows] == [("case", ""), ("slide", "A_HE2"), ("slide", "A_HE"),
                                                           ("slide", "A_ER")]
    failed = rows[1]
    assert failed["status"] == "failed" and failed["reason"] == "QC failed: no tissue"
    assert failed["call"] == "not assessed" and failed["confidence"] is None
    assert "failed slides: A_HE2" in rows[0]["details"]
    assert rows[3]["call"].startswith("ER: positive (area_positive_pct 12.5, cut-off 5)")


def test_case_without_case_call_is_listed_first_as_failed_not_dropped():
    rows = worklist_rows({"A": _case("A", "favours sarcoma", 1)}, [_summary("A", "A1"), _summary("B", "B1")])
    case_rows = [r for r in rows if r["level"] == "case"]
    assert [r["case_id"] for r in case_rows] == ["B", "A"]
    assert case_rows[0]["call"] == "failed: no result" and case_rows[0]["priority"] == 0
    assert "no case call" in case_rows[0]["reason"]


def test_worklist_tsv_has_one_line_per_row_and_no_stray_tabs():
    summary = _summary("A", "A1", reason="bad\ttab\nand newline", status="failed")
    text = worklist_tsv(worklist_rows({"A": _case("A", "refer", 2)}, [summary]))
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    assert len(rows) == 2 and rows[1]["reason"] == "bad tab and newline"
    assert all(len(line.split("\t")) == 11 for line in text.splitlines())


# ---- the page -------------------------------------------------------------------------------------------
def test_page_escapes_text_and_loads_nothing_from_outside():
    summary = _summary("A", "A1", reason="<script>alert(1)</script> & <img src=http://x>", status="failed")
    rows = worklist_rows({"A": _case("A", "refer", 2)}, [summary])
    page = render_html(rows, {"A": _case("A", "refer", 2)}, [summary], {})
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "http://" in page and 'src="http' not in page  # the text is shown, never loaded
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert page.index(DISCLAIMER) < page.index('id="worklist"')  # the notice comes first


def test_mini_cohort_outputs_pass_the_results_check(cohort):
    assert check_results(cohort) == {}
    rows = list(csv.DictReader((cohort / "worklist.tsv").read_text().splitlines(), delimiter="\t"))
    assert [r["level"] for r in rows].count("slide") == len(SLIDES)
    assert rows[0]["case_id"] == "C1" and rows[0]["call"] == "favours metastatic carcinoma"
    failed = [r for r in rows if r["slide_id"] == "S3"][0]
    assert failed["status"] == "failed" and failed["reason"].startswith("QC failed")
    page = (cohort / "report.html").read_text()
    assert page.count("data:image/") == 3 + 3 + 1  # three pictures per slide, the tissue one for a failed slide
    assert "broken_slide" not in page and str(cohort.parent) not in page


def test_report_is_byte_stable_and_run_facts_go_to_run_metadata(cohort, tmp_path):
    from pipeline.__main__ import main

    summaries = [str(cohort / "slides" / s / "summary.json") for s in SLIDES]
    cases = [str(p) for p in sorted(cohort.glob("cases/*/case.json"))]
    out = {k: tmp_path / k for k in ("worklist.tsv", "report.html", "run_metadata.json")}
    assert main(["make-report", "--summaries", *reversed(summaries), "--cases", *reversed(cases), "--out-worklist",
                 str(out["worklist.tsv"]), "--out-html", str(out["report.html"]), "--out-metadata",
                 str(out["run_metadata.json"])]) == 0
    for name in ("worklist.tsv", "report.html"):
        assert out[name].read_bytes() == (cohort / name).read_bytes(), name
    meta = json.loads(out["run_metadata.json"].read_text())
    for key in ("started", "finished", "host", "argv", "snakemake_version", "git_commit", "packages"):
        assert key in meta, key
    assert meta["n_slides"] == 3 and meta["n_failed_slides"] == 1


@pytest.mark.slow
def test_sample_cohort_outputs(cohort_run):
    """End-to-end: the sample cohort's people-facing outputs are complete and valid."""
    assert check_results(cohort_run / "results") == {}


# ---- the rules under Snakemake --------------------------------------------------------------------------
UPSTREAM = ("score_tiles", "quantify_ihc", "call_case")


def workflow_snakefile(dest: Path) -> Path:
    """The project's Snakefile with absolute includes and config path, so it runs from another directory."""
    text = (ROOT / "Snakefile").read_text()
    text = text.replace('configfile: "configs/', f'configfile: "{ROOT}/configs/')
    text = re.sub(r'include: "(pipeline/rules/[^"]+)"', lambda m: f'include: "{ROOT / m.group(1)}"', text)
    dest.write_text(text)
    return dest


@pytest.mark.slow
def test_rules_run_under_snakemake_and_its_report_has_the_pictures(tmp_path):
    """Upstream results in place (stand-in scores), Snakemake runs only the output rules; --report works."""
    slides = make_slides(tmp_path / "slides")
    results = tmp_path / "results"
    for slide_id, (_, stain) in SLIDES.items():
        run_stages(slides[slide_id], slide_id, stain, results)
    model = tmp_path / "model"
    model.mkdir()
    (model / "card.json").write_text(json.dumps({"weights": {"file": "weights.pt"}}))
    (model / "weights.pt").write_bytes(b"stand-in")
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("case_id\tslide_id\tpath\tstain\tmpp\n" + "".join(
        f"{c}\t{s}\t{slides[s]}\t{stain}\t\n" for s, (c, stain) in SLIDES.items()))
    snakefile = workflow_snakefile(tmp_path / "Snakefile")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(tmp_path),
           "--config", f"samples={sheet}", f"markers={ROOT / 'configs' / 'markers.yaml'}", f"model={model}",
           "--cores", "2"]
    env = {**os.environ, "SLIDE_TRIAGE_GIT_COMMIT": "0" * 40}
    dry = subprocess.run([*cmd, "--dry-run", "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    # Upstream outputs newer than everything they are made from, in stage order, so only the output rules run.
    base = time.time() - 100
    for p in [*slides.values(), model / "card.json", model / "weights.pt", results / "config.yaml"]:
        os.utime(p, (base, base))
    for step, patterns in enumerate((("qc.json", "thumb.png", "tissue.png"), ("tiles.parquet",),
                                     ("scores.parquet", "ihc.json", "ihc.parquet", "cells.geojson")), start=1):
        for pattern in patterns:
            for p in results.glob(f"slides/*/{pattern}"):
                os.utime(p, (base + step, base + step))
    run = subprocess.run([*cmd, "--quiet", "rules"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ran = set(re.findall(r"^(\w+)\s+\d+$", run.stdout + run.stderr, re.M))
    assert ran >= {"summarize_slide", "draw_slide", "export_geojson", "make_report"}
    assert not ran & {"qc_slide", "tile_slide", "score_tiles", "quantify_ihc"}
    assert check_results(results) == {}
    for rule in ("summarize_slide", "draw_slide", "export_geojson"):
        assert (tmp_path / "logs" / rule / "S1.log").is_file() and (tmp_path / "benchmarks" / rule / "S1.tsv").is_file()
    report = subprocess.run([*cmd, "--report", str(tmp_path / "snakemake_report.zip")], capture_output=True,
                            text=True, env=env, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    import zipfile

    names = zipfile.ZipFile(tmp_path / "snakemake_report.zip").namelist()
    for picture in ("heatmap.png", "top_tiles.png", "tissue_overlay.png", "worklist.tsv"):
        assert sum(n.endswith(picture) for n in names) >= (1 if picture == "worklist.tsv" else 3), picture
    lint = subprocess.run([*cmd, "--lint"], capture_output=True, text=True, env=env, timeout=300)
    assert "outputs.smk:" not in lint.stdout + lint.stderr, lint.stdout[-3000:]


def test_pandas_refused_as_if_absent():
    """Under the verbs' import finder pandas is found without an origin and refused on import (ImportError), so
    pyarrow carries on without it and torch's find_spec probes see no file; in a process of its own."""
    code = ("import importlib.util, sys; from pipeline.__main__ import _NoPandas\n"
            "sys.meta_path.insert(0, _NoPandas())\n"
            "assert importlib.util.find_spec('pandas').origin is None\n"
            "try:\n    import pandas\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('pandas imported')\n"
            "import numpy as np, pyarrow as pa\n"
            "assert pa.array(np.arange(3)).to_numpy().tolist() == [0, 1, 2] and 'pandas' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]


def test_output_verbs_never_import_torch(cohort, tmp_path):
    """Snakemake starts one process per job; importing torch would cost seconds in each, pandas (which pyarrow
    imports when it can) a third of a second. The verbs' entry point (``cli``) also keeps NumPy off huge pages."""
    d = cohort / "slides" / "S1"
    calls = [
        ["summarize-slide", "--slide-id", "S1", "--case-id", "C1", "--stain", "HE", "--qc", str(d / "qc.json"),
         "--tiles", str(d / "tiles.parquet"), "--scores", str(d / "scores.parquet"), "--config",
         str(ROOT / "configs" / "config.yaml"), "--out", str(tmp_path / "s.json")],
        ["draw-slide", "--summary", str(d / "summary.json"), "--thumb", str(d / "thumb.png"), "--mask",
         str(d / "tissue.png"), "--tiles", str(d / "tiles.parquet"), "--scores", str(d / "scores.parquet"),
         "--out-heatmap", str(tmp_path / "h.png"), "--out-tissue", str(tmp_path / "t.png"), "--out-top-tiles",
         str(tmp_path / "tt.png")],
        ["export-geojson", "--summary", str(d / "summary.json"), "--tiles", str(d / "tiles.parquet"), "--scores",
         str(d / "scores.parquet"), "--out", str(tmp_path / "g.geojson")],
        ["make-report", "--summaries", str(d / "summary.json"), "--out-worklist", str(tmp_path / "w.tsv"),
         "--out-html", str(tmp_path / "r.html"), "--out-metadata", str(tmp_path / "m.json")],
    ]
    for argv in calls:
        code = ("import os, sys; from pipeline.__main__ import cli; rc = cli(); "
                "assert 'torch' not in sys.modules, 'torch imported'; "
                "assert 'pandas' not in sys.modules, 'pandas imported'; "
                "assert os.environ['NUMPY_MADVISE_HUGEPAGE'] == '0'; sys.exit(rc)")
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{argv[0]}: {proc.stderr[-1500:]}"
