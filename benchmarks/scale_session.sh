#!/usr/bin/env bash
# One GPU-box session of the scale runs, through the real user path (snakemake): install the carried wheels (.whl:
# snakemake, faiss-cpu, bm25s, ... for Python 3.12), make a randomly initialised all-MiniLM-L6-v2 from its carried
# config (.gpu/minilm-config, benchmarks/random_encoder.py --config-only), generate an MS MARCO-shaped dataset
# (benchmarks/msmarco_synthetic.py, msmarco layout), run workflow/configs/scale.yaml (+ scale-SIZE.yaml) with
#   snakemake --cores all --resources gpu=1 mem_mb=<90% of the box's> --scheduler greedy
# and bring back the per-stage table (scale-SIZE.json), snakemake's output, logs and summaries (never models, runs
# or embeddings), then run optional benchmark commands, each appending to $OUT/benchmarks.txt.
#
#   bash benchmarks/scale_session.sh SIZE PASSAGES TRAIN_QUERIES DEV_QUERIES ["BENCHMARK COMMAND" ...]
# with carry [".whl", ".gpu"]. SMK_TIMEOUT (s) bounds snakemake; SMK_ARGS go to it.
set -uo pipefail
size=$1 passages=$2 train=$3 dev=$4; shift 4
source benchmarks/box.sh
box_setup || exit 1
command -v python > /dev/null || { mkdir -p /tmp/bin && ln -sf "$(command -v python3)" /tmp/bin/python; }  # rules call `python`
export PATH=/tmp/bin:$PATH
began=$(date +%s)
# a warm machine keeps both from an earlier call: made again, their new mtimes would make snakemake rerun everything
[ -d /tmp/scale/minilm-random ] || python3 benchmarks/random_encoder.py /tmp/scale/minilm-random --source .gpu/minilm-config > /dev/null 2>&1 || exit 1
[ -f /tmp/scale/data/.done-$passages ] || { /usr/bin/time -v python3 benchmarks/msmarco_synthetic.py /tmp/scale/data --passages "$passages" \
    --train-queries "$train" --dev-queries "$dev" --layout msmarco > "$OUT/generate.txt" 2>&1 || { cat "$OUT/generate.txt"; exit 1; }
    touch /tmp/scale/data/.done-$passages; tail -3 "$OUT/generate.txt"; }
echo "setup $(( $(date +%s) - began )) s" | tee -a "$OUT/device.txt"
configs="workflow/configs/scale.yaml"
[ -f "workflow/configs/scale-$size.yaml" ] && configs="$configs workflow/configs/scale-$size.yaml"
began=$(date +%s)
memory=$(( $(free -m | awk '/^Mem:/ {print $2}') * 9 / 10 ))  # Snakemake enforces mem_mb only when given it
timeout "${SMK_TIMEOUT:-540}" python3 -m snakemake --cores all --resources gpu=1 mem_mb=$memory --scheduler greedy \
    --configfile $configs ${SMK_ARGS:-} > "$OUT/snakemake.txt" 2>&1
echo "snakemake exit $? after $(( $(date +%s) - began )) s" | tee -a "$OUT/device.txt"
tail -4 "$OUT/snakemake.txt"
python3 benchmarks/stage_table.py results --json "$OUT/scale-$size.json" --label "$size: $passages passages, $train train queries, $dev dev queries" | tee "$OUT/table.md"
tar -czf "$OUT/results.tgz" --exclude='*/model' --exclude='*.parquet' --exclude=run.trec --exclude='*.faiss' \
    --exclude='*.npz' --exclude='*.npy' --exclude='results/work' --exclude='*.safetensors' --exclude='*.pt' results
box_benchmarks "$@"
