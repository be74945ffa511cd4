# Every stage's rule, made from one template: the values come from the stage's one declaration in
# stages/core/declarations.py (module, rule name, env, threads, memory, runtime, GPU).
STAGES = hardneg.STAGES  # common.smk

# Snakemake evaluates a shell directive twice: where the rule is defined, and again when a job runs, by then with
# the loop variable at the last stage. There `rule` (a parameter of the job's function) names the job's rule, so the
# command is looked up by it; the text is exactly the stage's command either way.
COMMAND_OF = {stage.rule: stage.shell() for stage in STAGES.values()}


def stage_output(stage):
    path = directory(f"results/{stage.name}/{{key}}")
    if stage.name != "report":
        return path
    # every plot and the table (results.html); the caption speaks of the file it is shown with
    return report(path, patterns=["{name}.png", "{name}.html"], caption="../report/results.rst", category="Results")


for stage in STAGES.values():

    rule:
        name:
            stage.rule
        input:
            unpack(stage_inputs(stage.name)),
        output:
            artifact=stage_output(stage),
        params:
            stage=stage_params(stage.name),
            inputs=stage_input_json(stage.name),
        log:
            f"results/logs/{stage.name}/{{key}}.log",
        message:
            f"{stage.name} {{wildcards.key}}, log: {{log}}"
        benchmark:
            f"results/benchmarks/{stage.name}/{{key}}.tsv"
        threads: stage.threads
        resources:
            **stage.resources(),
        conda:
            f"../../envs/{stage.env}.yaml"
        container:
            CONTAINER
        shell:
            COMMAND_OF[rule] if "rule" in locals() else stage.shell()
