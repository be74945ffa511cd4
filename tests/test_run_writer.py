"""Run writing: `RunWriter` and `write_run` against the row-by-row writer they replace."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.core.tables import (
    RUN_SCHEMA,
    RunWriter,
    read_run,
    run_from_topk,
    run_table_from_topk,
    strictly_decreasing,
    write_run,
    write_table,
)


def reference_write_run(run: pd.DataFrame, out_dir, tag: str) -> None:
    """`write_run` as it was before `RunWriter` (one Python f-string per row)."""
    run = run.sort_values(["query_id", "rank"], kind="stable")
    write_table(run, out_dir / "run.parquet", RUN_SCHEMA)
    scores = reference_strictly_decreasing(run["query_id"].to_numpy(), run["score"].to_numpy())
    with open(out_dir / "run.trec", "w") as trec:
        for query_id, doc_id, rank, score in zip(run["query_id"], run["doc_id"], run["rank"], scores):
            trec.write(f"{query_id} Q0 {doc_id} {rank} {score} {tag}\n")


def reference_strictly_decreasing(query_ids: np.ndarray, scores: np.ndarray) -> list[str]:
    micro = np.round(np.asarray(scores, dtype=np.float64) * 1e6).astype(np.int64)
    position = pd.Series(query_ids).groupby(query_ids, sort=False).cumcount().to_numpy()
    lowered = pd.Series(micro + position).groupby(query_ids, sort=False).cummin().to_numpy() - position
    return [f"{'-' if value < 0 else ''}{abs(value) // 1_000_000}.{abs(value) % 1_000_000:06d}" for value in lowered]


def awkward_run(seed: int, queries: int = 60, dtype=np.float64) -> pd.DataFrame:
    """Queries of 0-40 rows in shuffled row order: ties, negative scores, scores rising with rank, 1e-6 edges."""
    rng = np.random.default_rng(seed)
    frames = []
    for number in range(queries):
        rows = int(rng.integers(1, 41))
        base = rng.choice([0.0, -3.0, 12.5, -1e-7, 1e4, -0.4999995])
        steps = rng.choice([0.0, 1e-6, 5e-7, 0.25, -1e-6], size=rows)  # ties, edges, and a few rises with rank
        frames.append(
            pd.DataFrame(
                {
                    "query_id": f"q{number % 7}-{number}",
                    "doc_id": [f"d{rng.integers(1000)}" for _ in range(rows)],
                    "rank": np.arange(1, rows + 1),
                    "score": (base - np.cumsum(steps)).astype(dtype),
                }
            )
        )
    return pd.concat(frames).sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_write_run_matches_the_row_by_row_writer(tmp_path, seed, dtype):
    run = awkward_run(seed, dtype=dtype)
    (tmp_path / "new").mkdir()
    (tmp_path / "old").mkdir()
    write_run(run, tmp_path / "new", "t")
    reference_write_run(run, tmp_path / "old", "t")
    assert (tmp_path / "new" / "run.trec").read_bytes() == (tmp_path / "old" / "run.trec").read_bytes()
    assert pq.read_table(tmp_path / "new" / "run.parquet").equals(pq.read_table(tmp_path / "old" / "run.parquet"))


def test_large_and_negative_ranks_match_the_row_by_row_writer(tmp_path):
    run = awkward_run(4)
    run["rank"] = run["rank"] * 3_000_000 - 3_000_005  # negative, and past the rank table
    (tmp_path / "new").mkdir()
    (tmp_path / "old").mkdir()
    write_run(run, tmp_path / "new", "t")
    reference_write_run(run, tmp_path / "old", "t")
    assert (tmp_path / "new" / "run.trec").read_bytes() == (tmp_path / "old" / "run.trec").read_bytes()


def test_strictly_decreasing_matches_the_reference_in_any_row_order():
    run = awkward_run(5)  # shuffled: a query's rows are not together
    expected = reference_strictly_decreasing(run["query_id"].to_numpy(), run["score"].to_numpy())
    assert strictly_decreasing(run["query_id"].to_numpy(), run["score"].to_numpy()).to_pylist() == expected
    texts = strictly_decreasing(["q", "q", "r"], [-3.0, -3.0, 1e-7]).to_pylist()
    assert texts == ["-3.000000", "-3.000001", "0.000000"]


def test_batches_give_the_same_files_as_one_write(tmp_path):
    run = awkward_run(3).sort_values(["query_id", "rank"], kind="stable")
    (tmp_path / "whole").mkdir()
    (tmp_path / "batched").mkdir()
    write_run(run, tmp_path / "whole", "t")
    starts = np.flatnonzero(run["query_id"].ne(run["query_id"].shift()).to_numpy())
    with RunWriter(tmp_path / "batched", "t", chunk_rows=7) as writer:
        for first, stop in zip(starts[::5], [*starts[5::5], len(run)]):
            part = pa.Table.from_pandas(run.iloc[first:stop], preserve_index=False)
            writer.write(part["query_id"], part["doc_id"], part["rank"], part["score"])
    assert writer.rows == len(run)
    assert (tmp_path / "batched" / "run.trec").read_bytes() == (tmp_path / "whole" / "run.trec").read_bytes()
    assert read_run(tmp_path / "batched").equals(read_run(tmp_path / "whole"))


def test_a_query_split_across_writes_is_refused(tmp_path):
    with RunWriter(tmp_path, "t") as writer:
        writer.write(["q1", "q1"], ["a", "b"], [1, 2], [2.0, 1.0])
        with pytest.raises(ValueError, match="continues across two writes"):
            writer.write(["q1"], ["c"], [3], [0.5])


def test_empty_run_gives_empty_files(tmp_path):
    with RunWriter(tmp_path, "t") as writer:
        writer.write([], [], [], [])
    assert (tmp_path / "run.trec").read_bytes() == b"" and read_run(tmp_path).empty


def test_topk_table_matches_the_frame():
    indices = np.array([[2, 0, -1], [1, -1, -1]])
    scores = np.array([[0.9, 0.5, -np.inf], [0.7, -np.inf, -np.inf]], dtype=np.float32)
    doc_ids = ["a", "b", "c"]
    frame = run_from_topk(["q1", "q2"], np.asarray(doc_ids, dtype=object), indices, scores)
    table = run_table_from_topk(pa.array(["q1", "q2"]), pa.array(doc_ids), indices, scores)
    assert table.schema == RUN_SCHEMA
    assert table.to_pandas().equals(pa.Table.from_pandas(frame, schema=RUN_SCHEMA, preserve_index=False).to_pandas())
