# Fitting the tile classifier (pipeline/training/train_model.py): not part of `rule all`. Run it explicitly, e.g.
#   snakemake --cores 2 results/models/triage-effnetlite0-v2/card.json
# The candidate lands under results/models/; ship it by copying card.json + weights.pt to models/<model_id>/
# and pointing the config's `model` at it. Needs from common.smk: RESULTS, PIPELINE.
# (The v1 small CNN was trained end to end by `python -m pipeline train`; its card records the command.)

import os

# Labelled real H&E images (../shared/data: train/ and patches/, each with labels.csv). Sources that state no
# um/px get the scale assumed below (per source, from their READMEs and nuclear size; the card lists them).
TRAIN_LABELS = ["../shared/data/train/labels.csv", "../shared/data/patches/labels.csv"]
TRAIN_ASSUME_MPP = [
    "monuseg=0.25",  # MoNuSeg TCGA crops without XML: 40x, ~0.25 (the others state 0.246-0.253)
    "ucsb=0.33",  # UCSB breast TMA: not stated, ~0.25-0.35 by nuclear size
    "oral-scc-guan=0.4",  # OSCC photos: not stated, ~0.3-1 (nuclei: ~0.4)
    "_100x=1.0",  # Rahman oral photos at 100x
    "_400x=0.25",  # ... and at 400x
    "Osteosarcoma=1.0",  # TCIA osteosarcoma tiles: 10x, ~1 um/px
    "Komura=0.5",  # TCGA tiles: 20x, ~0.5 um/px
    "TCGA-COAD=0.5",
]
TRAIN_ARGS = "--mpp 1.0 --tile-px 224 --train-crops 8 --eval-tiles 4 --steps 400 --seed 0"


rule train_model:
    input:
        labels=TRAIN_LABELS,
    output:
        card=f"{RESULTS}/models/{{model_id}}/card.json",
        weights=f"{RESULTS}/models/{{model_id}}/weights.pt",
    params:
        pipeline=PIPELINE,
        labels=lambda wildcards, input: " ".join(f"--labels {p}" for p in input.labels),
        assume=" ".join(f"--assume-mpp {a}" for a in TRAIN_ASSUME_MPP),
        extra=TRAIN_ARGS,
        out=lambda wildcards: f"{RESULTS}/models/{wildcards.model_id}",
        cache=f"{RESULTS}/train_cache",
    wildcard_constraints:
        model_id="[a-z0-9][a-z0-9._-]{1,63}",
    log:
        "logs/train_model/{model_id}.log",
    benchmark:
        "benchmarks/train_model/{model_id}.tsv"
    threads: 2
    conda:
        "../../environment.yml"
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "{params.pipeline} train-model --out {params.out:q} --model-id {wildcards.model_id} {params.labels}"
        " {params.assume} {params.extra} --threads {threads} --cache-dir {params.cache:q} 2> {log:q}"
