"""Stages of the dense-retrieval training pipeline (STAR and ADORE, Zhan et al., SIGIR 2021).

Each stage is a module with a typed parameters object, one function doing the work and a thin CLI.
Shared pieces: `store` (content-addressed artifacts), `tables` (Parquet I/O), `errors` (user-facing errors),
`plan` (the experiment DAG that the Snakefile expands).
"""

__version__ = "0.1.0"
