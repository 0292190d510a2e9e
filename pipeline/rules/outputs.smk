# Outputs for people: per-slide summary (where the H&E slide call is made), pictures and QuPath GeoJSON, then the
# cohort worklist, review page and run metadata. Needs from common.smk: SAMPLES, CASES, HE_STAIN, RESULTS,
# RUN_CONFIG, PIPELINE, slide_file, mpp_arg. Inputs made by others: scores.parquet (he.smk), ihc.json and
# ihc.parquet (ihc.smk), case.json (case.smk), named here by path so include order does not matter.
# Per slide, the analysis results its outputs are made from: CNN scores (H&E) or DAB quantification (IHC).
# The other kind's entries are empty, and the CLI options for them then take no value.
STAGE_FILES = {
    slide: {
        "scores": [f"{RESULTS}/slides/{slide}/scores.parquet"] if row["stain"] == HE_STAIN else [],
        "ihc": [] if row["stain"] == HE_STAIN else [f"{RESULTS}/slides/{slide}/ihc.json"],
        "ihc_tiles": [] if row["stain"] == HE_STAIN else [f"{RESULTS}/slides/{slide}/ihc.parquet"],
    }
    for slide, row in SAMPLES.items()
}
PICTURE_FILES = [
    f"{RESULTS}/slides/{slide}/{name}"
    for slide in SAMPLES
    for name in ("heatmap.png", "top_tiles.png", "tissue_overlay.png")
]


rule summarize_slide:
    input:
        slide=slide_file,
        config=RUN_CONFIG,
        markers=config["markers"],
        qc=f"{RESULTS}/slides/{{slide}}/qc.json",
        tiles=f"{RESULTS}/slides/{{slide}}/tiles.parquet",
        scores=lambda wildcards: STAGE_FILES[wildcards.slide]["scores"],
        ihc=lambda wildcards: STAGE_FILES[wildcards.slide]["ihc"],
        ihc_tiles=lambda wildcards: STAGE_FILES[wildcards.slide]["ihc_tiles"],
    output:
        summary=f"{RESULTS}/slides/{{slide}}/summary.json",
    params:
        pipeline=PIPELINE,
        case=lambda wildcards: SAMPLES[wildcards.slide]["case_id"],
        stain=lambda wildcards: SAMPLES[wildcards.slide]["stain"],
    log:
        "logs/summarize_slide/{slide}.log",
    benchmark:
        "benchmarks/summarize_slide/{slide}.tsv"
    group:
        "slide"
    threads: 1
    conda:
        "../../environment.yml"
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "{params.pipeline} summarize-slide --slide-id {wildcards.slide} --case-id {params.case:q}"
        " --stain {params.stain:q} --slide {input.slide:q} --qc {input.qc:q} --tiles {input.tiles:q}"
        " --scores {input.scores:q} --ihc {input.ihc:q} --ihc-tiles {input.ihc_tiles:q}"
        " --config {input.config:q} --out {output.summary:q} 2> {log:q}"


rule draw_slide:
    input:
        slide=slide_file,
        summary=rules.summarize_slide.output.summary,
        thumb=f"{RESULTS}/slides/{{slide}}/thumb.png",
        mask=f"{RESULTS}/slides/{{slide}}/tissue.png",
        tiles=f"{RESULTS}/slides/{{slide}}/tiles.parquet",
        scores=lambda wildcards: STAGE_FILES[wildcards.slide]["scores"],
        ihc_tiles=lambda wildcards: STAGE_FILES[wildcards.slide]["ihc_tiles"],
    output:
        heatmap=report(
            f"{RESULTS}/slides/{{slide}}/heatmap.png",
            caption="captions/heatmap.rst",
            category="Slides",
            subcategory="{slide}",
            labels={"slide": "{slide}", "picture": "heatmap"},
        ),
        top_tiles=report(
            f"{RESULTS}/slides/{{slide}}/top_tiles.png",
            caption="captions/top_tiles.rst",
            category="Slides",
            subcategory="{slide}",
            labels={"slide": "{slide}", "picture": "top tiles"},
        ),
        tissue=report(
            f"{RESULTS}/slides/{{slide}}/tissue_overlay.png",
            caption="captions/tissue_overlay.rst",
            category="Slides",
            subcategory="{slide}",
            labels={"slide": "{slide}", "picture": "tissue overlay"},
        ),
    params:
        pipeline=PIPELINE,
        mpp=mpp_arg,
    log:
        "logs/draw_slide/{slide}.log",
    benchmark:
        "benchmarks/draw_slide/{slide}.tsv"
    group:
        "slide"
    threads: 1
    conda:
        "../../environment.yml"
    resources:
        mem_mb=1500,
        runtime=10,
    shell:
        "{params.pipeline} draw-slide --summary {input.summary:q} --slide {input.slide:q} {params.mpp}"
        " --thumb {input.thumb:q} --mask {input.mask:q} --tiles {input.tiles:q}"
        " --scores {input.scores:q} --ihc-tiles {input.ihc_tiles:q}"
        " --out-heatmap {output.heatmap:q} --out-top-tiles {output.top_tiles:q} --out-tissue {output.tissue:q}"
        " 2> {log:q}"


rule export_geojson:
    input:
        summary=rules.summarize_slide.output.summary,
        mask=f"{RESULTS}/slides/{{slide}}/tissue.png",
        tiles=f"{RESULTS}/slides/{{slide}}/tiles.parquet",
        scores=lambda wildcards: STAGE_FILES[wildcards.slide]["scores"],
        ihc_tiles=lambda wildcards: STAGE_FILES[wildcards.slide]["ihc_tiles"],
    output:
        geojson=f"{RESULTS}/slides/{{slide}}/tiles.geojson",
    params:
        pipeline=PIPELINE,
    log:
        "logs/export_geojson/{slide}.log",
    benchmark:
        "benchmarks/export_geojson/{slide}.tsv"
    group:
        "slide"
    threads: 1
    conda:
        "../../environment.yml"
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "{params.pipeline} export-geojson --summary {input.summary:q} --tiles {input.tiles:q} --mask {input.mask:q}"
        " --scores {input.scores:q} --ihc-tiles {input.ihc_tiles:q} --out {output.geojson:q} 2> {log:q}"


rule make_report:
    input:
        summaries=[f"{RESULTS}/slides/{s}/summary.json" for s in SAMPLES],
        cases=[f"{RESULTS}/cases/{c}/case.json" for c in CASES],
        pictures=PICTURE_FILES,
    output:
        worklist=report(
            f"{RESULTS}/worklist.tsv",
            caption="captions/worklist.rst",
            category="Cohort",
            labels={"output": "worklist"},
        ),
        html=f"{RESULTS}/report.html",
        metadata=f"{RESULTS}/run_metadata.json",
    params:
        pipeline=PIPELINE,
    log:
        "logs/make_report/make_report.log",
    benchmark:
        "benchmarks/make_report/make_report.tsv"
    threads: 1
    conda:
        "../../environment.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{params.pipeline} make-report --summaries {input.summaries:q} --cases {input.cases:q}"
        " --out-worklist {output.worklist:q} --out-html {output.html:q} --out-metadata {output.metadata:q}"
        " 2> {log:q}"


# After a failed job (keep-going runs the rest first), make_report cannot run: its inputs are missing. The
# same make-report command then writes the worklist and page from whatever is current, given the jobs that
# make each slide's and case's result (logs/make_report/jobs.tsv); every case whose result is missing or
# stale is listed first as "failed: no result" with the failed job's log. Nothing on the sheet disappears.
REPORT_JOBS = "logs/make_report/jobs.tsv"


onerror:
    atomic.write_text(REPORT_JOBS, result_jobs_tsv())
    _report = rules.make_report
    _quoted = lambda paths: " ".join(shlex.quote(str(p)) for p in paths)
    try:
        shell(
            f"{PIPELINE} make-report --jobs {REPORT_JOBS} --summaries {_quoted(_report.input.summaries)}"
            f" --cases {_quoted(_report.input.cases)} --out-worklist {shlex.quote(_report.output.worklist)}"
            f" --out-html {shlex.quote(_report.output.html)} --out-metadata {shlex.quote(_report.output.metadata)}"
            " 2> logs/make_report/after_failure.log"
        )
        print(f"A job failed: {_report.output.worklist} lists its case first as 'failed: no result' with the "
              "failed job's log (see logs/make_report/after_failure.log).", file=sys.stderr)
    except Exception as exc:  # the run has already failed; say so rather than hide the original error
        print(f"A job failed, and the report after it failed too ({exc}): see "
              "logs/make_report/after_failure.log", file=sys.stderr)
