"""The experiment methods (the config's ``experiments[].method``): how each builds its chain of a `plan.Chain`.

A new method is one entry here (and the schema's enum, which tests/test_schema_agreement.py ties to this dict).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from .ance import ance_rounds


def dense_run(chain, split: str, top_k: int | None):
    """Retrieval with the method's document encoder over an index of the corpus it encoded."""
    encoder = chain.document_encoder()
    return chain.retrieve(split, chain.index_of(chain.shards(encoder)), encoder, top_k)


def adore_run(chain, split: str, top_k: int | None):
    index, query_encoder = chain.adore()
    return chain.retrieve(split, index, query_encoder, top_k)


def dense_export(chain) -> dict:
    encoder = chain.document_encoder()
    return {"documents": encoder} if encoder is not None else {}


def adore_export(chain) -> dict:
    """ADORE's own query encoder, and the encoder that filled its index (none: the base encoder)."""
    _, adore = chain.adore()
    encoder = adore.inputs.get("init")
    return {"queries": adore, **({"documents": encoder} if encoder is not None else {})}


@dataclass(frozen=True)
class Method:
    trained: bool = True
    """Run once per seed (and needs the train split)."""
    document_encoder: Optional[Callable] = None
    """chain -> its trained document encoder (None: the base encoder); unset: the method encodes no documents."""
    run: Callable = dense_run
    """(chain, split, top_k) -> the run over ``split``."""
    export: Optional[Callable] = dense_export
    """chain -> the export's encoder inputs; None: nothing to export."""


METHODS: dict[str, Method] = {
    "bm25": Method(trained=False, run=lambda chain, split, top_k: chain.bm25(split, top_k), export=None),
    "zeroshot": Method(trained=False, document_encoder=lambda chain: None),
    "warmup": Method(document_encoder=lambda chain: chain.warmup()),
    "star": Method(document_encoder=lambda chain: chain.star()),
    "ance": Method(document_encoder=lambda chain: ance_rounds(chain)[-1]),  # its last round's model
    "adore": Method(run=adore_run, export=adore_export),
}
DOCUMENT_ENCODERS = [name for name, method in METHODS.items() if method.document_encoder is not None]
