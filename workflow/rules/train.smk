rule train_warmup:
    input:
        unpack(stage_inputs("train_warmup")),
    output:
        artifact=directory("results/train_warmup/{key}"),
    params:
        stage=stage_params("train_warmup"),
        inputs=stage_input_json("train_warmup"),
    log:
        "results/logs/train_warmup/{key}.log",
    benchmark:
        "results/benchmarks/train_warmup/{key}.tsv"
    threads: 8  # tokenizing the training texts before step 1, preparing steps ahead of the GPU (fewer on fewer --cores)
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    conda:
        "../../envs/train.yaml"
    container:
        CONTAINER
    shell:
        "python -m stages.launch --gpus {resources.gpu} -- stages.train_warmup {output.artifact} --params {params.stage:q} --inputs {params.inputs:q} > {log} 2>&1"


rule train_star:
    input:
        unpack(stage_inputs("train_star")),
    output:
        artifact=directory("results/train_star/{key}"),
    params:
        stage=stage_params("train_star"),
        inputs=stage_input_json("train_star"),
    log:
        "results/logs/train_star/{key}.log",
    benchmark:
        "results/benchmarks/train_star/{key}.tsv"
    threads: 8  # tokenizing the training texts before step 1, preparing steps ahead of the GPU (fewer on fewer --cores)
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    conda:
        "../../envs/train.yaml"
    container:
        CONTAINER
    shell:
        "python -m stages.launch --gpus {resources.gpu} -- stages.train_star {output.artifact} --params {params.stage:q} --inputs {params.inputs:q} > {log} 2>&1"


rule train_adore:
    input:
        unpack(stage_inputs("train_adore")),
    output:
        artifact=directory("results/train_adore/{key}"),
    params:
        stage=stage_params("train_adore"),
        inputs=stage_input_json("train_adore"),
    log:
        "results/logs/train_adore/{key}.log",
    benchmark:
        "results/benchmarks/train_adore/{key}.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    conda:
        "../../envs/train.yaml"
    container:
        CONTAINER
    shell:
        "python -m stages.launch --gpus {resources.gpu} -- stages.train_adore {output.artifact} --params {params.stage:q} --inputs {params.inputs:q} > {log} 2>&1"
