#!/usr/bin/env bash
# One GPU-machine session (no snakemake, faiss or bm25s installed there; no network): install the carried wheels,
# unpack the carried fp16 MiniLM, run a config's DAG in order with stages.pipeline.run_plan, pack metrics, logs, plots and
# summaries (never models, embeddings or runs) into $OUT/results.tgz, then run optional benchmark commands, each
# writing into $OUT.
#
#   bash benchmarks/gpu_session.sh CONFIG ["BENCHMARK COMMAND" ...]
# with carry [".whl", ".gpu"] (see README, "GPU runs"). PLAN_TIMEOUT (s) bounds the DAG; PLAN_ARGS go to run_plan
# (e.g. PLAN_ARGS="--train-gpus 2" on a 2-GPU machine: every training stage under torchrun on both GPUs).
set -uo pipefail
config=$1; shift
source benchmarks/box.sh
box_setup || exit 1
tar -xJf .gpu/all-MiniLM-L6-v2-fp16.tar.xz -C /tmp
timeout "${PLAN_TIMEOUT:-3600}" python3 -m stages.pipeline.run_plan --keep-going --deadline "${PLAN_DEADLINE:-0}" --configfile "$config" ${PLAN_ARGS:-} > "$OUT/run_plan.txt" 2>&1
echo "run_plan exit $?"; tail -5 "$OUT/run_plan.txt"
tar -czf "$OUT/results.tgz" --exclude='*/model' --exclude=embeddings.parquet --exclude=run.parquet \
    --exclude=run.trec --exclude=index.faiss --exclude=vectors --exclude=negatives.parquet --exclude='results/prepare' \
    --exclude='results/work' --exclude='results/export' results
box_benchmarks "$@"
