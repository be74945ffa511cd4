"""Every stage declared once: the module that runs it, its Snakemake rule, its conda env, and what one of its jobs
asks for. The Snakefile makes each stage's rule from one template (`workflow/rules/stages.smk`), and
`stages.pipeline.run_plan` starts stages with the same commands, so both paths launch every stage the same way.

A GPU stage is started through `stages.core.launch` (it claims free devices; several GPUs run the stage under torchrun);
a CPU stage runs with no GPU visible.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .. import PACKAGE


@dataclass(frozen=True)
class Stage:
    name: str
    """The module `stages.<name>`; its artifacts are results/<name>/<key>."""
    rule: str
    """Its Snakemake rule: <stage>_<action>."""
    env: str
    """envs/<env>.yaml."""
    threads: int
    """Snakemake caps it at --cores; the stage works on what it is given (`stages.core.resources.available_threads`)."""
    mem_mb: int
    runtime: int
    """Minutes (a cluster's walltime)."""
    gpu: bool = False
    distributed: bool = False
    """It can run on several GPUs at once (torchrun, DDP): the trainers."""

    def command(self, argv: list[str], gpus: int = 1) -> list[str]:
        """The stage's process: through `stages.core.launch` on ``gpus`` GPUs for a GPU stage."""
        module = f"{PACKAGE}.{self.name}"
        if self.gpu:
            return [sys.executable, "-m", f"{PACKAGE}.core.launch", f"--gpus={gpus}", "--", module, *argv]
        return [sys.executable, "-m", module, *argv]

    def env_vars(self) -> dict[str, str]:
        """What the stage's process sees changed: a CPU stage no GPU."""
        return {} if self.gpu else {"CUDA_VISIBLE_DEVICES": ""}

    def shell(self) -> str:
        """The rule's shell command (Snakemake's placeholders)."""
        launch = f"python -m {PACKAGE}.core.launch --gpus {{resources.gpu}} -- " if self.gpu else "CUDA_VISIBLE_DEVICES= python -m "
        return f"{launch}{PACKAGE}.{self.name} {{output.artifact}} --params {{params.stage:q}} --inputs {{params.inputs:q}} > {{log}} 2>&1"

    def resources(self) -> dict[str, int]:
        return {"mem_mb": self.mem_mb, "runtime": self.runtime} | ({"gpu": 1} if self.gpu else {})


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("prepare", "prepare_dataset", "prepare", threads=1, mem_mb=4000, runtime=30),
        Stage("tokenize", "tokenize_corpus", "dense", threads=16, mem_mb=8000, runtime=60),
        # worker processes tokenize their own rows (8.8M passages on 16: ~1 GiB each, ~7 GiB in the main process)
        Stage("bm25_index", "bm25_index", "bm25", threads=16, mem_mb=32000, runtime=240),
        # the train split's run is on the DAG's critical path: on the GPU where there is one (stages.ml.sparse_search),
        # else on the threads (1M passages: 64 s on 8 threads, 39 s on 16)
        Stage("bm25", "bm25_retrieve", "bm25", threads=16, mem_mb=16000, runtime=60, gpu=True),
        Stage("encode", "encode_corpus", "dense", threads=2, mem_mb=8000, runtime=120, gpu=True),
        Stage("index", "index_build", "dense", threads=2, mem_mb=16000, runtime=60),
        Stage("retrieve", "retrieve_dense", "dense", threads=2, mem_mb=8000, runtime=60, gpu=True),
        Stage("mine_negatives", "mine_negatives", "dense", threads=1, mem_mb=4000, runtime=15),
        # 8 threads: the training texts are tokenized before step 1, the steps prepared ahead of the GPU
        Stage("train_warmup", "train_warmup", "train", threads=8, mem_mb=16000, runtime=240, gpu=True, distributed=True),
        Stage("train_star", "train_star", "train", threads=8, mem_mb=16000, runtime=240, gpu=True, distributed=True),
        Stage("train_adore", "train_adore", "train", threads=2, mem_mb=16000, runtime=240, gpu=True, distributed=True),
        Stage("score", "score_run", "score", threads=1, mem_mb=2000, runtime=15),
        Stage("report", "report_results", "report", threads=1, mem_mb=4000, runtime=15),
        Stage("export", "export_retriever", "export", threads=1, mem_mb=4000, runtime=15),
    )
}
