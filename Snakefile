# slide-triage: carcinoma-vs-sarcoma triage of H&E and IHC whole-slide images.
# Decision support, not a diagnosis. Entry point only: the rules live in pipeline/rules/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "configs/config.yaml"


include: "pipeline/rules/common.smk"


wildcard_constraints:
    slide=SLIDE_PATTERN,
    case=CASE_PATTERN,


include: "pipeline/rules/slides.smk"
include: "pipeline/rules/he.smk"
include: "pipeline/rules/ihc.smk"
include: "pipeline/rules/outputs.smk"
include: "pipeline/rules/case.smk"
include: "pipeline/rules/training.smk"


rule all:
    input:
        all_outputs,
    default_target: True
