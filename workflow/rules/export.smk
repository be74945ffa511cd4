rule export_retriever:
    input:
        unpack(stage_inputs("export")),
    output:
        artifact=directory("results/export/{key}"),
    params:
        stage=stage_params("export"),
        inputs=stage_input_json("export"),
    log:
        "results/logs/export/{key}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        "../../envs/dense.yaml"
    container:
        CONTAINER
    shell:
        "CUDA_VISIBLE_DEVICES= python -m stages.export {output.artifact} --params {params.stage:q} --inputs {params.inputs:q} > {log} 2>&1"
