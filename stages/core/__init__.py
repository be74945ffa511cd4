"""The contract and I/O every stage shares: user-facing errors, the content-addressed artifact store, Parquet
tables, the stage CLI, resource metering, stage declarations, the schema's defaults (settings), and finding datasets
and models. Imports nothing above it (no torch at import)."""
