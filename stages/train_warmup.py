"""Stage `train_warmup`: the paper's warm-up model, from which STAR starts and mines its static hard negatives.

It is the STAR trainer of `train_star` (`stages.ml.star_training`: same params, same loop) run with ``negatives = "star"`` on negatives mined from a
BM25 run, initialised from the base model (no ``init`` input): BM25 hard negatives plus random in-batch negatives,
as ANCE's warm-up, which the paper reuses. A stage of its own so that its artifacts and config section are distinct.

Inputs: ``prepared``, ``negatives`` (a mine_negatives artifact over a BM25 train run). Outputs as `train_star`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .ml.distributed import run_stage
from .ml.star_training import StarParams, train_star

VERSION = 1


@dataclass
class WarmupParams(StarParams):
    """`train_star`'s params; the config sets ``negatives: star`` and ``model`` to the base encoder."""


def main(argv: list[str] | None = None) -> int:
    return run_stage("train_warmup", WarmupParams, train_star, argv)


if __name__ == "__main__":
    sys.exit(main())
