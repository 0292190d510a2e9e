# IHC slides: DAB quantification per tile and per slide, with the marker's result (pipeline/ihc/quantify.py).
# Needs from common.smk: SAMPLES, IHC_SLIDES, RESULTS, RUN_CONFIG, PIPELINE, slide_file, mpp_arg.

# Only IHC slides match (an H&E slide has no DAB to quantify); "(?!)" matches nothing when there are none.
IHC_PATTERN = "|".join(IHC_SLIDES) or "(?!)"


rule quantify_ihc:
    input:
        slide=slide_file,
        config=RUN_CONFIG,
        markers=config["markers"],
        tiles=f"{RESULTS}/slides/{{slide}}/tiles.parquet",
        qc=f"{RESULTS}/slides/{{slide}}/qc.json",
    output:
        tiles=f"{RESULTS}/slides/{{slide}}/ihc.parquet",
        ihc=f"{RESULTS}/slides/{{slide}}/ihc.json",
    params:
        pipeline=PIPELINE,
        mpp=mpp_arg,
        marker=lambda wildcards: SAMPLES[wildcards.slide]["stain"],  # the knowledge-base marker name
    wildcard_constraints:
        slide=IHC_PATTERN,
    log:
        "logs/quantify_ihc/{slide}.log",
    benchmark:
        "benchmarks/quantify_ihc/{slide}.tsv"
    group:
        "slide"
    threads: 2
    conda:
        "../../environment.yml"
    resources:
        mem_mb=3000,
        runtime=30,
    shell:
        "{params.pipeline} quantify-ihc --slide {input.slide:q} --slide-id {wildcards.slide} {params.mpp}"
        " --marker {params.marker:q} --tiles {input.tiles:q} --qc {input.qc:q} --config {input.config:q}"
        " --markers {input.markers:q} --out-tiles {output.tiles:q} --out {output.ihc:q} --threads {threads}"
        " 2> {log:q}"
