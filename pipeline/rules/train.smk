# Training a tile classifier (pipeline/train.py): not part of `rule all`. Run it explicitly, e.g.
#   snakemake --cores 2 results/models/triage-smallcnn-v1/card.json
# The candidate lands under results/models/; ship it by copying card.json + weights.pt to models/<model_id>/
# and pointing the config's `model` at it. Needs from common.smk: RESULTS, PIPELINE.

import os

# Labelled real patches (../shared/data/patches: <class>/<image> + labels.csv); rows without um/px get the
# scale assumed below (TCIA osteosarcoma tiles: 10x, about 1 um/px; TCGA tiles: 20x, about 0.5 um/px).
TRAIN_PATCHES = "../shared/data/patches"
TRAIN_ASSUME_MPP = ["Osteosarcoma=1.0", "Komura=0.5", "TCGA-COAD=0.5"]
# The arguments that trained the shipped models/triage-smallcnn-v1 (2 CPU cores; the time budget ended it at
# step 730 of 1500, so a faster or busier machine stops elsewhere: same data and seed, not the same bytes).
TRAIN_ARGS = (
    "--architecture small_cnn --synthetic 450 --textures 300 --steps 1500 --batch-size 48"
    " --eval-every 250 --time-budget-min 28 --seed 0"
)


rule train_model:
    input:
        labels=f"{TRAIN_PATCHES}/labels.csv",
    output:
        card=f"{RESULTS}/models/{{model_id}}/card.json",
        weights=f"{RESULTS}/models/{{model_id}}/weights.pt",
    params:
        pipeline=PIPELINE,
        patches=lambda wildcards, input: os.path.dirname(input.labels),
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
        "{params.pipeline} train --out {params.out:q} --model-id {wildcards.model_id} --patches {params.patches:q}"
        " {params.assume} {params.extra} --threads {threads} --cache-dir {params.cache:q} 2> {log:q}"
