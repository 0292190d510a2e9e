# Shared set-up: validate the config and the sample sheet first, then expose them to the rules.
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from pipeline import atomic
from pipeline.config import HE_STAIN, load_samples
from pipeline.errors import ConfigError
from pipeline.ihc.markers import load_markers
from pipeline.case.panel_rules import load_rules, rules_path_for
from pipeline.outputs.report import JOBS_COLUMNS

validate(config, "../schemas/config.schema.yaml")

# The panel rules table: the config's `panel_rules`, or panel_rules.yaml next to the marker knowledge base.
PANEL_RULES = config["panel_rules"] or str(rules_path_for(config["markers"]))
try:
    _SAMPLE_ROWS = load_samples(config["samples"], config["markers"])
    load_rules(PANEL_RULES, load_markers(config["markers"]))
except ConfigError as exc:
    raise WorkflowError(f"error: {exc}") from None
for _row in _SAMPLE_ROWS:
    validate(_row, "../schemas/samples.schema.yaml")

SAMPLES = {row["slide_id"]: row for row in _SAMPLE_ROWS}
CASES = {}
for _row in _SAMPLE_ROWS:
    CASES.setdefault(_row["case_id"], []).append(_row["slide_id"])
HE_SLIDES = [s for s, row in SAMPLES.items() if row["stain"] == HE_STAIN]
IHC_SLIDES = [s for s, row in SAMPLES.items() if row["stain"] != HE_STAIN]
RESULTS = config["results"]
# Every CLI call gets the validated, effective config (file config + --config overrides), so a rule's
# command is exactly what a person would type, and a config change re-runs what depends on it.
RUN_CONFIG = f"{RESULTS}/config.yaml"
_effective = atomic.dumps_json(dict(config))
try:
    _current = open(RUN_CONFIG, encoding="utf-8").read()
except OSError:
    _current = None
if _current != _effective:
    atomic.write_text(RUN_CONFIG, _effective)
# The interpreter running Snakemake (the project's venv) runs the CLI too, also on cluster nodes.
PIPELINE = f"{shlex.quote(sys.executable)} -m pipeline"

# Wildcard values are exactly the sheet's ids (set in the Snakefile with wildcard_constraints).
SLIDE_PATTERN = "|".join(SAMPLES)
CASE_PATTERN = "|".join(CASES)


def slide_file(wildcards):
    return SAMPLES[wildcards.slide]["path"]


def mpp_arg(wildcards):
    """``--mpp X`` when the sample sheet overrides the slide's MPP, else nothing."""
    mpp = SAMPLES[wildcards.slide]["mpp"]
    return f"--mpp {float(mpp)!r}" if mpp else ""


def slide_dir(slide):
    return f"{RESULTS}/slides/{slide}"


def all_outputs(wildcards):
    """The default target: per-slide results, per-case calls and the cohort report.

    The outputs for people (summaries, pictures, GeoJSON, case calls, worklist, review page; outputs.smk) join
    once the stages they are made from are part of the workflow: scoring for H&E slides, IHC quantification
    for IHC slides and the case call.
    """
    targets = []
    for slide in SAMPLES:
        targets += [f"{slide_dir(slide)}/qc.json", f"{slide_dir(slide)}/tiles.parquet"]
    needed = ["summarize_slide", "call_case"]
    needed += ["score_tiles"] if HE_SLIDES else []
    needed += ["quantify_ihc"] if IHC_SLIDES else []
    if all(rules.has(name) for name in needed):
        for slide in SAMPLES:
            d = slide_dir(slide)
            targets += [f"{d}/summary.json", f"{d}/tiles.geojson", f"{d}/heatmap.png", f"{d}/top_tiles.png",
                        f"{d}/tissue_overlay.png"]
            # each stage's own files are results too: a deleted one is made again, not left missing
            stain_files = ["scores.parquet"] if SAMPLES[slide]["stain"] == HE_STAIN else [
                "ihc.json", "ihc.parquet", "cells.geojson"]
            targets += [f"{d}/{name}" for name in stain_files]
        targets += [f"{RESULTS}/cases/{case}/case.json" for case in CASES]
        targets += [f"{RESULTS}/worklist.tsv", f"{RESULTS}/report.html", f"{RESULTS}/run_metadata.json"]
    return targets


def result_jobs_tsv():
    """The jobs table for the report after a failed run (outputs.smk, onerror): per slide in pipeline order,
    then per case, the job making each result, its output and its log (columns: JOBS_COLUMNS)."""
    lines = ["\t".join(JOBS_COLUMNS)]
    for case, slides in CASES.items():
        for slide in slides:
            stain = SAMPLES[slide]["stain"]
            stage = "score_tiles" if stain == HE_STAIN else "quantify_ihc"
            for name in ("qc_slide", "tile_slide", stage, "summarize_slide"):
                job = getattr(rules, name)
                paths = [str(job.output[0]).format(slide=slide), str(job.log[0]).format(slide=slide)]
                lines.append("\t".join((case, slide, stain, name, *paths)))
        job = rules.call_case
        paths = [str(job.output[0]).format(case=case), str(job.log[0]).format(case=case)]
        lines.append("\t".join((case, "", "", "call_case", *paths)))
    return "\n".join(lines) + "\n"


# The H&E slide each IHC slide is registered onto: the first H&E slide of its case in sheet order (none: the
# marker is read over the whole tissue, flagged "not restricted to tumour").
HE_OF = {s: next((h for h in CASES[SAMPLES[s]["case_id"]] if h in HE_SLIDES), None) for s in IHC_SLIDES}
REGISTERED = [s for s in IHC_SLIDES if HE_OF[s]]


def he_mpp_arg(wildcards):
    """``--he-mpp X`` when the sample sheet overrides the H&E slide's MPP, else nothing."""
    mpp = SAMPLES[HE_OF[wildcards.slide]]["mpp"]
    return f"--he-mpp {float(mpp)!r}" if mpp else ""


def region_inputs(wildcards):
    """The registration and the H&E slide's grid and scores, when the case has an H&E slide."""
    he = HE_OF.get(wildcards.slide)
    if not he:
        return {}
    return {"registration": f"{RESULTS}/slides/{wildcards.slide}/registration.json",
            "he_tiles": f"{RESULTS}/slides/{he}/tiles.parquet", "he_scores": f"{RESULTS}/slides/{he}/scores.parquet"}


def region_args(wildcards, input):
    if "registration" not in input.keys():
        return ""
    return (f"--registration {shlex.quote(input.registration)} --he-tiles {shlex.quote(input.he_tiles)}"
            f" --he-scores {shlex.quote(input.he_scores)}")
