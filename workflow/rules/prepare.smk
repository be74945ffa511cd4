rule prepare_dataset:
    input:
        unpack(stage_inputs("prepare")),
    output:
        artifact=directory("results/prepare/{key}"),
    params:
        stage=stage_params("prepare"),
        inputs=stage_input_json("prepare"),
    log:
        "results/logs/prepare/{key}.log",
    benchmark:
        "results/benchmarks/prepare/{key}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/prepare.yaml"
    container:
        CONTAINER
    shell:
        "CUDA_VISIBLE_DEVICES= python -m stages.prepare {output.artifact} --params {params.stage:q} --inputs {params.inputs:q} > {log} 2>&1"
