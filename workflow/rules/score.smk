rule score_run:
    input:
        unpack(stage_inputs("score")),
    output:
        artifact=directory("results/score/{key}"),
    params:
        stage=stage_params("score"),
        inputs=stage_input_json("score"),
    log:
        "results/logs/score/{key}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../../envs/score.yaml"
    container:
        CONTAINER
    shell:
        "CUDA_VISIBLE_DEVICES= python -m stages.score {output.artifact} --params {params.stage:q} --inputs {params.inputs:q} > {log} 2>&1"
