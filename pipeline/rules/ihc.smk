# IHC slides: registration onto the case's H&E slide (pipeline/ihc/register.py), then DAB quantification per tile
# and per slide with the marker's result, read in the registered tumour region (pipeline/ihc/quantify.py).
# Needs from common.smk: SAMPLES, IHC_SLIDES, HE_OF, REGISTERED, RESULTS, RUN_CONFIG, PIPELINE, slide_file, mpp_arg,
# he_mpp_arg, region_inputs, region_args.

# Only IHC slides match (an H&E slide has no DAB to quantify); "(?!)" matches nothing when there are none.
IHC_PATTERN = "|".join(IHC_SLIDES) or "(?!)"
REGISTERED_PATTERN = "|".join(REGISTERED) or "(?!)"


rule register_ihc:
    input:
        he=lambda wildcards: SAMPLES[HE_OF[wildcards.slide]]["path"],
        ihc=slide_file,
    output:
        registration=f"{RESULTS}/slides/{{slide}}/registration.json",
    params:
        pipeline=PIPELINE,
        he_id=lambda wildcards: HE_OF[wildcards.slide],
        he_mpp=he_mpp_arg,
        ihc_mpp=lambda wildcards: mpp_arg(wildcards).replace("--mpp", "--ihc-mpp"),
    wildcard_constraints:
        slide=REGISTERED_PATTERN,
    log:
        "logs/register_ihc/{slide}.log",
    benchmark:
        "benchmarks/register_ihc/{slide}.tsv"
    group:
        "slide"
    threads: 1
    conda:
        "../../environment.yml"
    resources:
        mem_mb=3000,
        runtime=15,
    shell:
        "{params.pipeline} register-ihc --he {input.he:q} --ihc {input.ihc:q} --he-id {params.he_id}"
        " --ihc-id {wildcards.slide} {params.he_mpp} {params.ihc_mpp} --out {output.registration:q} 2> {log:q}"


rule quantify_ihc:
    input:
        unpack(region_inputs),  # registration.json and the H&E slide's grid and scores (when there is one)
        slide=slide_file,
        config=RUN_CONFIG,
        markers=config["markers"],
        tiles=f"{RESULTS}/slides/{{slide}}/tiles.parquet",
        qc=f"{RESULTS}/slides/{{slide}}/qc.json",
    output:
        tiles=f"{RESULTS}/slides/{{slide}}/ihc.parquet",
        ihc=f"{RESULTS}/slides/{{slide}}/ihc.json",
        cells=f"{RESULTS}/slides/{{slide}}/cells.geojson",
    params:
        pipeline=PIPELINE,
        mpp=mpp_arg,
        marker=lambda wildcards: SAMPLES[wildcards.slide]["stain"],  # the knowledge-base marker name
        region=region_args,
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
        " --markers {input.markers:q} {params.region} --out-tiles {output.tiles:q} --out {output.ihc:q}"
        " --out-cells {output.cells:q} --threads {threads} 2> {log:q}"
