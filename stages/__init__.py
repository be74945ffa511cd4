"""Stages of the dense-retrieval training pipeline (STAR and ADORE, Zhan et al., SIGIR 2021).

Layers, each importing only from those before it:
- `stages.core`: the contract and I/O: errors, the artifact store, artifact file names, Parquet tables, the stage CLI,
  declarations, settings (the schema's defaults), dataset formats and their readers; imports only `core`;
- `stages.ml`: the ML library: encoders, packing, search, the training loop, the STAR trainer and loss, ADORE's loss,
  dev evaluation, measures, strategies (samplers, index kinds), stats; imports `core` and `ml`;
- `stages.<stage>`: one module a stage (`python -m stages.<stage>`), each a typed params object, a function and a
  thin CLI; or one package a stage (`stages/<stage>/`: ``__main__``, its modules, ``VERSION`` in its ``__init__``)
  when its helpers are its own. A stage imports only `core`, `ml` and its own package, never another stage;
- `stages.pipeline`: the config (`config`), the experiment DAG (`dag`), `run_plan`, `prune` and the `hardneg` command,
  which know every stage.

Modules import each other relatively, so that the package works under another name too (`PACKAGE`): the wheel is
to install it as `hardneg` (issue "Fit the ecosystem"), since another distribution already owns `stages`.
"""

__version__ = "0.1.0"
PACKAGE = __name__
"""The name this package was imported under: ``python -m {PACKAGE}.<stage>`` starts a stage."""
