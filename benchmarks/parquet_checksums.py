"""What page checksums cost (`stages.core.parquet_io`): writing and reading a run and an embeddings shard with and
without them, on this machine. Prints one JSON object (and writes it to ``--out``); asserts nothing.

The run has ``--queries`` x ``--depth`` rows (a dev run: 6,980 x 1,000 at MS MARCO size), the shard ``--docs`` x
``--dim`` float16 embeddings (1M x 384: the corpus of the 1M scale run in one shard). Each timing is the best of
``--repeats``; the file is read back whole, as `score` reads a run and `index` streams a shard. The write options are
those of `stages.core.tables` (`RunWriter`, `write_embeddings`).

    python benchmarks/parquet_checksums.py --queries 6980 --depth 1000 --docs 1000000 --dim 384
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.core.tables import RUN_SCHEMA, embedding_schema


def best_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return min(times)


def run_table(queries: int, depth: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    query_ids = np.repeat(np.array([f"q{q}" for q in range(queries)], dtype=object), depth)
    doc_ids = np.array([f"d{d}" for d in rng.integers(0, 8_841_823, queries * depth)], dtype=object)
    ranks = np.tile(np.arange(1, depth + 1, dtype=np.int32), queries)
    scores = np.sort(rng.random((queries, depth), dtype=np.float32), axis=1)[:, ::-1].reshape(-1)
    return pa.Table.from_arrays([pa.array(query_ids), pa.array(doc_ids), pa.array(ranks), pa.array(scores)],
                                schema=RUN_SCHEMA)


def embeddings_table(docs: int, dim: int, seed: int) -> pa.Table:
    values = np.random.default_rng(seed).standard_normal((docs, dim), dtype=np.float32).astype(np.float16)
    column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim)
    ids = pa.array([f"d{i}" for i in range(docs)], pa.string())
    return pa.Table.from_arrays([ids, column], schema=embedding_schema(dim, "float16"))


def measure(table: pa.Table, folder: Path, options: dict, repeats: int) -> dict:
    """Seconds to write and read ``table`` without and with page checksums, and the file size."""
    found = {}
    for checked in (False, True):
        path = folder / f"table-{checked}.parquet"
        write = lambda: pq.write_table(table, path, write_page_checksum=checked, **options)  # noqa: E731
        read = lambda: pq.read_table(path, page_checksum_verification=checked)  # noqa: E731
        found["checked" if checked else "plain"] = {
            "write_s": round(best_seconds(write, repeats), 4),
            "read_s": round(best_seconds(read, repeats), 4),
            "bytes": path.stat().st_size,
        }
    plain, checked = found["plain"], found["checked"]
    found["overhead"] = {kind: round(checked[kind] / plain[kind] - 1, 4) for kind in ("write_s", "read_s")}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=6980)
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run = measure(run_table(args.queries, args.depth, args.seed), Path(folder),
                      {"compression": "zstd", "use_dictionary": ["query_id"]}, args.repeats)
        shard = measure(embeddings_table(args.docs, args.dim, args.seed), Path(folder),
                        {"compression": "none", "row_group_size": 65536, "use_dictionary": False}, args.repeats)
    result = {"run_rows": args.queries * args.depth, "run": run, "shard_rows": args.docs, "dim": args.dim,
              "shard": shard}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
