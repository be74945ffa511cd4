rule index_build:
    input:
        unpack(stage_inputs("index")),
    output:
        artifact=directory("results/index/{key}"),
    params:
        stage=stage_params("index"),
        inputs=stage_input_json("index"),
    log:
        "results/logs/index/{key}.log",
    benchmark:
        "results/benchmarks/index/{key}.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=60,
    conda:
        "../../envs/dense.yaml"
    container:
        CONTAINER
    shell:
        "CUDA_VISIBLE_DEVICES= python -m stages.index {output.artifact} --params {params.stage:q} --inputs {params.inputs:q} > {log} 2>&1"
