# Per-slide stages that every slide goes through: quality control + tissue, then the tile grid.


rule qc_slide:
    input:
        slide=slide_file,
        config=RUN_CONFIG,
    output:
        qc=f"{RESULTS}/slides/{{slide}}/qc.json",
        thumb=f"{RESULTS}/slides/{{slide}}/thumb.png",
        mask=f"{RESULTS}/slides/{{slide}}/tissue.png",
    params:
        pipeline=PIPELINE,
        mpp=mpp_arg,
        stain=lambda wildcards: SAMPLES[wildcards.slide]["stain"],
    log:
        "logs/qc_slide/{slide}.log",
    benchmark:
        "benchmarks/qc_slide/{slide}.tsv"
    group:
        "slide"
    threads: 1
    conda:
        "../../environment.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{params.pipeline} qc-slide --slide {input.slide:q} --slide-id {wildcards.slide} {params.mpp}"
        " --stain {params.stain:q} --config {input.config:q} --out {output.qc:q} --thumb {output.thumb:q}"
        " --mask {output.mask:q} 2> {log:q}"


rule tile_slide:
    input:
        slide=slide_file,
        config=RUN_CONFIG,
        qc=rules.qc_slide.output.qc,
        mask=rules.qc_slide.output.mask,
    output:
        tiles=f"{RESULTS}/slides/{{slide}}/tiles.parquet",
    params:
        pipeline=PIPELINE,
        mpp=mpp_arg,
    log:
        "logs/tile_slide/{slide}.log",
    benchmark:
        "benchmarks/tile_slide/{slide}.tsv"
    group:
        "slide"
    threads: 1
    conda:
        "../../environment.yml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "{params.pipeline} tile-slide --slide {input.slide:q} --slide-id {wildcards.slide} {params.mpp}"
        " --config {input.config:q} --qc {input.qc:q} --mask {input.mask:q} --out {output.tiles:q}"
        " 2> {log:q}"
