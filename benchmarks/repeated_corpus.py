"""A BEIR-layout copy of SciFact with its documents repeated up to ``--docs`` documents (a large corpus with
SciFact's length distribution, for encoding benchmarks). Copy 0 keeps the original ids, so the judgments still hold;
copy k > 0 gets ids ``<id>-r<k>``. Queries and qrels are copied unchanged.

    python benchmarks/repeated_corpus.py --docs 1000000 --out /tmp/scifact-repeated
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

SCIFACT = Path(__file__).resolve().parent.parent / "resources" / "scifact"


def write_repeated(total: int, out: Path, source: Path = SCIFACT) -> None:
    """Writes the dataset: ``total`` documents."""
    with gzip.open(source / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        docs = [json.loads(line) for line in handle if line.strip()]
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for number in range(total):
            copy, doc = divmod(number, len(docs))
            row = dict(docs[doc], _id=docs[doc]["_id"] if copy == 0 else f"{docs[doc]['_id']}-r{copy}")
            handle.write(json.dumps(row) + "\n")
    shutil.copy(source / "queries.jsonl", out / "queries.jsonl")
    for qrels in (source / "qrels").glob("*.tsv"):
        shutil.copy(qrels, out / "qrels" / qrels.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    write_repeated(args.docs, args.out)
    print(f"{args.docs} documents in {args.out}")


if __name__ == "__main__":
    main()
