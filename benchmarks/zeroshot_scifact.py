"""Zero-shot check: all-MiniLM-L6-v2 (bundled) on the full SciFact test split through prepare -> encode -> index ->
retrieve -> score, calling the stage functions directly into a temporary folder.

Expected nDCG@10: 0.645 +- 0.005 (mean pooling, normalised, max length 256, title + " " + text).

    python benchmarks/zeroshot_scifact.py [--batch-size 64] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from stages.core import settings
from stages.encode import EncodeParams, encode
from stages.index import IndexParams, build_index
from stages.core.dataset_formats import dataset_files
from stages.prepare import PrepareParams, prepare
from stages.retrieve import RetrieveParams, retrieve
from stages.score import ScoreParams, score

SCIFACT = Path(__file__).resolve().parent.parent / "resources" / "scifact"
EXPECTED_NDCG10, TOLERANCE = 0.645, 0.005


def run(work: Path, batch_size: int) -> dict:
    folders = {name: work / name for name in ("prepare", "encode", "index", "retrieve", "score")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    timings = {}

    def timed(name, function, *args):
        began = time.perf_counter()
        result = function(*args)
        timings[name] = round(time.perf_counter() - began, 1)
        return result

    prepare_params = PrepareParams(
        format="beir",
        splits=["train", "test"],
        dev_fraction=0.1,
        dev_source="train",
        seed=13,
        unknown_ids="error",
        empty_documents="keep",
    )
    files = dataset_files(SCIFACT, "beir", prepare_params.splits)
    timed("prepare", prepare, prepare_params, files, folders["prepare"])
    prepared = {"prepared": folders["prepare"]}
    whole = {"what": "corpus", "split": "", "shard": 0, "num_shards": 1}
    encode_params = settings.params(EncodeParams, "encode", "encoder", **whole, max_length=256, batch_size=batch_size)
    encoded = timed("encode", encode, encode_params, prepared, folders["encode"])
    index_params = settings.params(IndexParams, "index", kind="flat")
    timed("index", build_index, index_params, {"shard_0": folders["encode"]}, folders["index"])
    retrieve_params = settings.params(
        RetrieveParams, "retrieve", "encoder", split="test", top_k=1000, query_max_length=64, batch_size=batch_size
    )
    timed("retrieve", retrieve, retrieve_params, {**prepared, "index": folders["index"]}, folders["retrieve"])
    score_params = settings.params(ScoreParams, "score", split="test")
    timed("score", score, score_params, {**prepared, "run": folders["retrieve"]}, folders["score"])
    metrics = json.loads((folders["score"] / "metrics.json").read_text())
    return {"metrics": metrics, "seconds": timings, "encode": encoded}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--keep", type=Path, help="write the artifacts here instead of a temporary folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    began = time.perf_counter()
    if args.keep:
        result = run(args.keep, args.batch_size)
    else:
        with tempfile.TemporaryDirectory(prefix="zeroshot-scifact-") as work:
            result = run(Path(work), args.batch_size)
    wall = time.perf_counter() - began
    metrics = result["metrics"]["metrics"]
    print(f"\nSciFact test ({result['metrics']['queries']} queries), all-MiniLM-L6-v2 zero-shot:")
    for name, value in metrics.items():
        print(f"  {name:8s} {value['mean']:.4f}  95% CI [{value['ci95'][0]:.4f}, {value['ci95'][1]:.4f}]")
    encoded = result["encode"]
    print(f"encode: {encoded['rows']} docs in {encoded['seconds']:.1f} s ({encoded['texts_per_s']} docs/s, "
          f"{encoded['tokens_per_s']} tokens/s on {encoded['device']})")
    print(f"stage seconds: {result['seconds']}; wall {wall:.1f} s")
    ndcg = metrics["nDCG@10"]["mean"]
    ok = abs(ndcg - EXPECTED_NDCG10) <= TOLERANCE
    print(f"nDCG@10 {ndcg:.4f} vs expected {EXPECTED_NDCG10} +- {TOLERANCE}: {'OK' if ok else 'OFF'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
