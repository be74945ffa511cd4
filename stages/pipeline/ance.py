"""ANCE (Xiong et al., 2021) unrolled into rounds of the DAG: round 0 trains from the warm-up model on the warm-up
model's negatives (static hard negatives only); round k re-encodes the corpus with round k-1's model, builds a flat
index, retrieves the train queries, mines their negatives and trains from round k-1's model on them.

Every round is ordinary content-addressed artifacts, so raising ``ance.rounds`` reuses the earlier rounds. The loss
is train_star's hard term (sampler ``static``): each query's positive against its mined negative(s).
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLER = "static"


@dataclass
class AnceSettings:
    """The config's ``ance`` section."""

    rounds: int
    """Refreshes after round 0 (each: re-encode, re-index, re-mine, train on)."""
    steps_per_round: int
    """Training steps of each round; 0: epochs_per_round decide."""
    epochs_per_round: int


def round_prefix(number: int) -> str:
    return f"ance-{number}-"


def ance_rounds(chain) -> list:
    """The trained model (a `plan.Node`) of each round of a `plan.Chain`, round 0 first; roles ``ance-<k>``, and
    ``ance-<k>-*`` for the refresh before round k."""
    settings = AnceSettings(**chain.section("ance"))
    params = chain.train_params("star")
    params.update(negatives=SAMPLER, epochs=settings.epochs_per_round, max_steps=settings.steps_per_round)
    model, negatives = chain.warmup(), chain.negatives("warmup")
    models = []
    for number in range(settings.rounds + 1):
        if number:
            negatives = chain.model_negatives(model, round_prefix(number), f"{round_prefix(number)}negatives")
        inputs = {"prepared": chain.roles["prepare"], "tokens": chain.tokens(), "negatives": negatives, "init": model}
        model = chain.add(f"ance-{number}", "train_star", params, inputs)
        models.append(model)
    return models
