"""Tokens/s of the `tokenize` stage's path (corpus Parquet read in chunks -> tokens.parquet) for 1, 2, ... threads,
on an MS MARCO-shaped synthetic corpus (`msmarco_synthetic.py`); checks that every thread count writes the same bytes.

Where the main process spends its time (it reads, hands out tasks, joins and writes; the workers tokenize): seconds
until the first chunk is back (worker start), reading chunks, waiting for workers' results, building the Arrow rows
and writing them. If waiting is small and reading + building + writing fill the run, the main process is the bound.

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

import stages.tokenize as stage  # noqa: E402
from stages.tokenize import CHUNK, corpus_chunks, write_token_chunks  # noqa: E402


class MainProcessClock:
    """Seconds of the main process in each part of `write_token_chunks`, by wrapping the functions it calls."""

    def __init__(self):
        self.seconds = {"read": 0.0, "wait_for_workers": 0.0, "build_rows": 0.0, "write": 0.0}
        self.first_chunk_s = None
        self.began = time.perf_counter()

    def timed(self, part: str, function):
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - began
                if part == "wait_for_workers" and self.first_chunk_s is None:
                    self.first_chunk_s = time.perf_counter() - self.began

        return wrapper

    def chunks(self, chunks):
        iterator = iter(chunks)
        while True:
            began = time.perf_counter()
            item = next(iterator, None)
            self.seconds["read"] += time.perf_counter() - began
            if item is None:
                return
            yield item

    def run(self, tokenizer, corpus: Path, max_length: int, out: Path, threads: int):
        originals = stage._joined, stage.token_rows, pq.ParquetWriter.write_table
        stage._joined = self.timed("wait_for_workers", stage._joined)
        stage.token_rows = self.timed("build_rows", stage.token_rows)
        pq.ParquetWriter.write_table = self.timed("write", pq.ParquetWriter.write_table)
        try:
            return write_token_chunks(tokenizer, self.chunks(corpus_chunks(corpus, CHUNK)), max_length, out, threads)
        finally:
            stage._joined, stage.token_rows, pq.ParquetWriter.write_table = originals


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
            clock = MainProcessClock()
            rows, tokens = clock.run(tokenizer, corpus, args.max_length, out, threads)
            seconds = time.perf_counter() - clock.began
            outputs.append(out.read_bytes())
            row = {"threads": threads, "documents": rows, "tokens": tokens, "seconds": round(seconds, 2)}
            row |= {"tokens_per_s": round(tokens / seconds), "documents_per_s": round(rows / seconds)}
            row["main_process_s"] = {part: round(value, 2) for part, value in clock.seconds.items()}
            row["first_chunk_back_s"] = round(clock.first_chunk_s or 0.0, 2)
            print(json.dumps(row))
        print(json.dumps({"same_bytes_for_every_thread_count": all(o == outputs[0] for o in outputs)}))


if __name__ == "__main__":
    main()
