rule bm25_index:
    input:
        unpack(stage_inputs("bm25_index")),
    output:
        artifact=directory("results/bm25_index/{key}"),
    params:
        stage=stage_params("bm25_index"),
        inputs=stage_input_json("bm25_index"),
    log:
        "results/logs/bm25_index/{key}.log",
    benchmark:
        "results/benchmarks/bm25_index/{key}.tsv"
    threads: 1
    resources:
        mem_mb=32000,
        runtime=240,
    conda:
        "../../envs/bm25.yaml"
    container:
        CONTAINER
    shell:
        "CUDA_VISIBLE_DEVICES= python -m stages.bm25_index {output.artifact} --params {params.stage:q} --inputs {params.inputs:q} > {log} 2>&1"


rule bm25_retrieve:
    input:
        unpack(stage_inputs("bm25")),
    output:
        artifact=directory("results/bm25/{key}"),
    params:
        stage=stage_params("bm25"),
        inputs=stage_input_json("bm25"),
    log:
        "results/logs/bm25/{key}.log",
    benchmark:
        "results/benchmarks/bm25/{key}.tsv"
    threads: 16  # the train split's run is on the DAG's critical path (1M: 64 s on 8 threads, 39 s on 16)
    resources:
        mem_mb=16000,
        runtime=60,
    conda:
        "../../envs/bm25.yaml"
    container:
        CONTAINER
    shell:
        "CUDA_VISIBLE_DEVICES= python -m stages.bm25 {output.artifact} --params {params.stage:q} --inputs {params.inputs:q} > {log} 2>&1"
