"""Stage `train_star`: STAR (Zhan et al., SIGIR 2021) and its baselines, as options of one trainer.

One encoder with shared weights embeds queries and documents. Each step takes ``batch_size`` training queries, one
positive each (drawn among its judged positives) and ``hard_negatives_per_query`` negatives each, and scores every
query against every document of the batch: ``score = q . d / temperature``.

Loss terms, over (query, negative) pairs; documents judged relevant to the query never count as its negatives:

- hard: the query with its own negatives;
- random: the query with every other document of the batch (other queries' positives and negatives); this is
  STAR's cheap source of random negatives (in-batch sharing, no extra encoding).

Each pair costs the pairwise logistic (RankNet) loss of the paper's code, ``softplus(s_neg - s_pos) =
-log sigmoid(s_pos - s_neg)`` (there: log-softmax over the two scores). ``random_weight < 0`` combines the terms as
the paper's code does: the mean over all pairs of both terms; otherwise ``hard mean + random_weight * random mean``.
``loss = "softmax"`` is the listwise alternative (cross-entropy of the positive against the negatives, as
sentence-transformers' MultipleNegativesRankingLoss).

Modes (``negatives``, the samplers of `stages.ml.negative_samplers`): ``star`` = static hard negatives (input
``negatives``) + random; ``static`` = the hard term only; ``inbatch`` (Inbatch-Neg) = no extra negatives, the random
term over the other queries' positives; ``randneg`` (Rand-Neg) = negatives drawn uniformly from the corpus, + random
(the paper's code scores Rand-Neg only against the batch's random documents, not against other queries' positives).
Losses (``loss``): the entries of `LOSSES`.

Several processes (torchrun, see `stages.ml.distributed`): each rank encodes its slice of the global batch's queries
with their positives and negatives; the document embeddings of all ranks are gathered (gradients flow back to the rank
that encoded them), so each query still meets every document of the global batch, with the same masks. A rank's loss
is its share of the global loss: its pairs' (or queries') losses over the global count.

The trainer (shared with `train_warmup`) is `stages.ml.star_training`, its loss `stages.ml.star_loss`.

Why a temperature: STAR scores with the plain inner product of un-normalised RoBERTa embeddings. A normalising model
(MiniLM) gives cosines in [-1, 1], so score differences stay below 2 and the logistic loss saturates early with weak
gradients; dividing by 0.05 (sentence-transformers' default scale 20) restores a useful range. Use temperature 1 for
the plain inner product.

Inputs: ``prepared`` (train split), ``negatives`` (a mine_negatives artifact; star and static), optional ``init`` (an
artifact with model/, e.g. the warm-up model, which the paper initialises STAR from; otherwise ``model``), optional
``tokens`` (the corpus's `tokenize` artifact: its ids instead of tokenizing documents here).
With ``eval_every`` > 0 (off in the CPU default: each evaluation re-encodes the corpus) the dev split is evaluated while
training (`stages.ml.dev_eval`) and model/ is the best model by dev (the step and value in summary.json's ``dev``).
Outputs: model/, train_log.parquet, loss.png, summary.json, tensorboard/ (when ``tensorboard`` is installed).
"""

from __future__ import annotations

import sys

from .ml.distributed import run_stage
from .ml.star_training import StarParams, train_star

VERSION = 1


def main(argv: list[str] | None = None) -> int:
    return run_stage("train_star", StarParams, train_star, argv)


if __name__ == "__main__":
    sys.exit(main())
