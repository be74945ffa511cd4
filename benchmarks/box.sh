# Shared by the GPU-box session scripts (sourced): the carried wheels installed, the environment, and the
# benchmark commands run after the DAG.
box_setup() {  # NO_WHEELS=1: the packages are installed already (a CPU rehearsal)
    if [ -z "${NO_WHEELS:-}" ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
    fi
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true HF_HUB_OFFLINE=1
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # NVLink multicast off
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no GPU"; nproc; free -g | head -2; } | tee "$OUT/device.txt"
}

box_benchmarks() {  # each argument a command; output appended to $OUT/benchmarks.txt
    for command in "$@"; do
        echo "== $command" | tee -a "$OUT/benchmarks.txt"
        bash -c "$command" >> "$OUT/benchmarks.txt" 2>&1
        tail -c 2500 "$OUT/benchmarks.txt"
    done
    ls -la "$OUT"
}
