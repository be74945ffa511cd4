rule retrieve_dense:
    input:
        unpack(stage_inputs("retrieve")),
    output:
        artifact=directory("results/retrieve/{key}"),
    params:
        stage=stage_params("retrieve"),
        inputs=stage_input_json("retrieve"),
    log:
        "results/logs/retrieve/{key}.log",
    benchmark:
        "results/benchmarks/retrieve/{key}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    conda:
        "../../envs/dense.yaml"
    container:
        CONTAINER
    shell:
        "python -m stages.launch --gpus {resources.gpu} -- stages.retrieve {output.artifact} --params {params.stage:q} --inputs {params.inputs:q} > {log} 2>&1"


rule mine_negatives:
    input:
        unpack(stage_inputs("mine_negatives")),
    output:
        artifact=directory("results/mine_negatives/{key}"),
    params:
        stage=stage_params("mine_negatives"),
        inputs=stage_input_json("mine_negatives"),
    log:
        "results/logs/mine_negatives/{key}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../../envs/dense.yaml"
    container:
        CONTAINER
    shell:
        "CUDA_VISIBLE_DEVICES= python -m stages.mine_negatives {output.artifact} --params {params.stage:q} --inputs {params.inputs:q} > {log} 2>&1"
