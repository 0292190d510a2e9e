# H&E slides: score the tile grid with the CNN (pipeline/scoring.py); the slide call is made from these
# scores by the summary stage (pipeline/aggregate.py). Needs from common.smk: HE_SLIDES, RESULTS, PIPELINE,
# slide_file, mpp_arg.

# Only H&E slides match (the CNN is an H&E model); "(?!)" matches nothing when there are none.
HE_PATTERN = "|".join(HE_SLIDES) or "(?!)"


def model_files(wildcards):
    """The model card and the weights it names: a new model re-scores every slide."""
    import json

    card = f"{config['model']}/card.json"
    try:
        with open(card, encoding="utf-8") as fh:
            return [card, f"{config['model']}/{json.load(fh)['weights']['file']}"]
    except (OSError, ValueError, KeyError, TypeError):
        return [card]  # score-tiles names the problem with the card


rule score_tiles:
    input:
        slide=slide_file,
        tiles=f"{RESULTS}/slides/{{slide}}/tiles.parquet",
        model=model_files,
    output:
        scores=f"{RESULTS}/slides/{{slide}}/scores.parquet",
    params:
        pipeline=PIPELINE,
        mpp=mpp_arg,
        model=config["model"],
    wildcard_constraints:
        slide=HE_PATTERN,
    log:
        "logs/score_tiles/{slide}.log",
    benchmark:
        "benchmarks/score_tiles/{slide}.tsv"
    group:
        "slide"
    threads: 2
    conda:
        "../../environment.yml"
    resources:
        mem_mb=3000,
        runtime=30,
    shell:
        "{params.pipeline} score-tiles --slide {input.slide:q} {params.mpp} --tiles {input.tiles:q}"
        " --model {params.model:q} --out {output.scores:q} --threads {threads} --batch-size 64 --device auto"
        " 2> {log:q}"
