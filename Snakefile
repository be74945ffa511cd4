# Dense retrieval with hard negatives (STAR / ADORE, Zhan et al., SIGIR 2021) as a DAG of content-addressed stages.
# Run: snakemake --cores all   (README.md). Every artifact lives in results/<stage>/<key>/.


# A --configfile replaces config.yaml rather than being merged over it (Snakemake's default), so that a config such
# as workflow/configs/paper.yaml gets the schema's defaults, not config.yaml's CPU-sized ones, for what it leaves out:
# the same config that `python -m stages.pipeline.run_plan --configfile` reads.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/stages.smk"


rule all:
    input:
        PLAN.targets(),
    default_target: True
