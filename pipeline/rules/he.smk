# H&E slides: score the tile grid with the CNN (pipeline/he/scoring.py); the slide call is made from these
# scores by the summary stage (pipeline/he/slide_call.py). Needs from common.smk: HE_SLIDES, RESULTS, PIPELINE,
# slide_file, mpp_arg.

import json
import os

# Only H&E slides match (the CNN is an H&E model); "(?!)" matches nothing when there are none.
HE_PATTERN = "|".join(HE_SLIDES) or "(?!)"


# The model card and the weights it names are inputs: a new model re-scores every slide. (A missing or broken
# card leaves only the card as input; score-tiles then names the problem.)
# A relative model path is looked up in the working directory, then beside the Snakefile (the shipped models),
# so a run with --directory elsewhere still finds models/<model_id>.
MODEL_DIR = config["model"]
if not os.path.isabs(MODEL_DIR) and not os.path.exists(MODEL_DIR):
    if os.path.exists(os.path.join(workflow.basedir, MODEL_DIR)):
        MODEL_DIR = os.path.join(workflow.basedir, MODEL_DIR)
MODEL_CARD = f"{MODEL_DIR}/card.json"
try:
    with open(MODEL_CARD, encoding="utf-8") as _card:
        MODEL_FILES = [MODEL_CARD, f"{MODEL_DIR}/{json.load(_card)['weights']['file']}"]
except (OSError, ValueError, KeyError, TypeError):
    MODEL_FILES = [MODEL_CARD]


rule score_tiles:
    input:
        slide=slide_file,
        tiles=f"{RESULTS}/slides/{{slide}}/tiles.parquet",
        model=MODEL_FILES,
    output:
        scores=f"{RESULTS}/slides/{{slide}}/scores.parquet",
    params:
        pipeline=PIPELINE,
        mpp=mpp_arg,
        model=lambda wildcards, input: os.path.dirname(input.model[0]),
        # a model without OOD statistics is refused unless the config opts out (slide_call.require_ood: false)
        ood="" if config["slide_call"]["require_ood"] else "--allow-no-ood",
        # the H&E tile check's thresholds (pipeline/he/tile_check.py); a change re-scores the slides
        tile_check=json.dumps(config["tile_check"], sort_keys=True),
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
        " --tile-check {params.tile_check:q} {params.ood} 2> {log:q}"
