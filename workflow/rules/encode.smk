rule tokenize_corpus:
    input:
        unpack(stage_inputs("tokenize")),
    output:
        artifact=directory("results/tokenize/{key}"),
    params:
        stage=stage_params("tokenize"),
        inputs=stage_input_json("tokenize"),
    log:
        "results/logs/tokenize/{key}.log",
    benchmark:
        "results/benchmarks/tokenize/{key}.tsv"
    threads: 16  # Snakemake caps it at --cores; the stage tokenizes on every core it is given
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/dense.yaml"
    container:
        CONTAINER
    shell:
        "CUDA_VISIBLE_DEVICES= python -m stages.tokenize {output.artifact} --params {params.stage:q} --inputs {params.inputs:q} > {log} 2>&1"


rule encode_corpus:
    input:
        unpack(stage_inputs("encode")),
    output:
        artifact=directory("results/encode/{key}"),
    params:
        stage=stage_params("encode"),
        inputs=stage_input_json("encode"),
    log:
        "results/logs/encode/{key}.log",
    benchmark:
        "results/benchmarks/encode/{key}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    conda:
        "../../envs/dense.yaml"
    container:
        CONTAINER
    shell:
        "python -m stages.launch --gpus {resources.gpu} -- stages.encode {output.artifact} --params {params.stage:q} --inputs {params.inputs:q} > {log} 2>&1"
