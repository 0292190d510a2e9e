# Per case: combine the H&E slide calls and IHC results of every slide of the case (pipeline/case/call.py).
# Needs from common.smk: CASES, RESULTS, RUN_CONFIG, PANEL_RULES, PIPELINE; each slide's summary.json comes
# from the summary rule.


rule call_case:
    input:
        # summary.json of every slide of the case, H&E and IHC
        summaries=lambda wildcards: [f"{RESULTS}/slides/{s}/summary.json" for s in CASES[wildcards.case]],
        config=RUN_CONFIG,
        markers=config["markers"],
        rules=PANEL_RULES,
    output:
        case=f"{RESULTS}/cases/{{case}}/case.json",
    params:
        pipeline=PIPELINE,
    log:
        "logs/call_case/{case}.log",
    benchmark:
        "benchmarks/call_case/{case}.tsv"
    threads: 1
    conda:
        "../../environment.yml"
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "{params.pipeline} call-case --case {wildcards.case} --summaries {input.summaries:q}"
        " --markers {input.markers:q} --rules {input.rules:q} --config {input.config:q} --out {output.case:q}"
        " 2> {log:q}"
