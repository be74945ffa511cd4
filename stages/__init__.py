"""Stages of the dense-retrieval training pipeline (STAR and ADORE, Zhan et al., SIGIR 2021).

Layers, each importing only from those before it:
- `stages.core`: the contract and I/O: errors, the artifact store, Parquet tables, the stage CLI, declarations;
- `stages.ml`: the ML library: encoders, packing, search, training loop, strategies (samplers, index kinds), stats;
- `stages.<stage>`: one module a stage (`python -m stages.<stage>`), each a typed params object, a function and a
  thin CLI; or one package a stage (`stages/<stage>/`: ``__main__``, its modules, ``VERSION`` in its ``__init__``)
  when its helpers are its own. A stage imports only `core`, `ml` and its own package, never another stage;
- `stages.pipeline`: the experiment DAG (`plan`), `run_plan` and `prune`, which know every stage.

Modules import each other relatively, so that the package works under another name too (`PACKAGE`): the wheel is
to install it as `hardneg` (issue "Fit the ecosystem"), since another distribution already owns `stages`.
"""

__version__ = "0.1.0"
PACKAGE = __name__
"""The name this package was imported under: ``python -m {PACKAGE}.<stage>`` starts a stage."""
