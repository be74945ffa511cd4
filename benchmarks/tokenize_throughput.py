"""Tokens/s of the `tokenize` stage's path (corpus Parquet read in chunks -> tokens.parquet) for 1, 2, ... threads,
on an MS MARCO-shaped synthetic corpus (`msmarco_synthetic.py`); checks that every thread count writes the same bytes.

    python benchmarks/tokenize_throughput.py --passages 200000 --threads 1 2 4 8 16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from msmarco_synthetic import generate  # noqa: E402

from stages.tokenize import CHUNK, corpus_chunks, write_token_chunks  # noqa: E402


def corpus_parquet(folder: Path, passages: int) -> Path:
    """collection.tsv of a synthetic dataset as the `prepare` stage's corpus table."""
    generate(folder, passages, train=1, dev=1)
    ids, texts = [], []
    for line in open(folder / "collection.tsv", encoding="utf-8"):
        pid, text = line.rstrip("\n").split("\t", 1)
        ids.append(pid)
        texts.append(text)
    table = pa.table({"doc_id": ids, "title": [""] * len(ids), "text": texts})
    pq.write_table(table, folder / "corpus.parquet")
    return folder / "corpus.parquet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=200_000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    from stages.ml.models import load_tokenizer  # torch: not imported again by every (spawned) worker

    tokenizer = load_tokenizer(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = corpus_parquet(Path(tmp), args.passages)
        outputs = []
        for threads in args.threads:
            out = Path(tmp) / f"tokens-{threads}.parquet"
            began = time.perf_counter()
            rows, tokens = write_token_chunks(tokenizer, corpus_chunks(corpus, CHUNK), args.max_length, out, threads)
            seconds = time.perf_counter() - began
            outputs.append(out.read_bytes())
            row = {"threads": threads, "documents": rows, "tokens": tokens, "seconds": round(seconds, 2)}
            row |= {"tokens_per_s": round(tokens / seconds), "documents_per_s": round(rows / seconds)}
            print(json.dumps(row))
        print(json.dumps({"same_bytes_for_every_thread_count": all(o == outputs[0] for o in outputs)}))


if __name__ == "__main__":
    main()
