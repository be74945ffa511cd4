rule report_results:
    input:
        unpack(stage_inputs("report")),
    output:
        artifact=report(
            directory("results/report/{key}"),
            patterns=["{name}.png"],
            caption="../report/results.rst",
            category="Results",
        ),
    params:
        stage=stage_params("report"),
        inputs=stage_input_json("report"),
    log:
        "results/logs/report/{key}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../../envs/report.yaml"
    container:
        CONTAINER
    shell:
        "CUDA_VISIBLE_DEVICES= python -m stages.report {output.artifact} --params {params.stage:q} --inputs {params.inputs:q} > {log} 2>&1"
