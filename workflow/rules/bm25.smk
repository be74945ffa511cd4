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
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/bm25.yaml"
    container:
        CONTAINER
    shell:
        "python -m stages.bm25 {output.artifact} --params {params.stage:q} --inputs {params.inputs:q} > {log} 2>&1"
