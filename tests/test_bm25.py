"""Stages bm25_index and bm25 on the slice and on the full embedded SciFact (reference: nDCG@10 0.6863 with bm25s
0.3.16): the same documents and scores as bm25s' own retrieve, ties by corpus row, one index for every split; the
torch backend (`stages.ml.sparse_search`, run here on the CPU device) gives the scipy path's run, and the stage
without a GPU imports no torch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from helpers import prepare_params
import stages.bm25
from stages.bm25 import Bm25Params, bm25_run, search, top_k
from stages.core.declarations import STAGES
from stages.core.resources import gpu_may_be_visible
from stages.ml import sparse_search
from stages.ml.sparse_search import SparseTorchSearcher, batch_size, settle_ties
from stages.bm25_index import Bm25IndexParams, build_index
from stages.ml.lexical import import_bm25s, load_index, tokenize
from stages.core import settings
from stages.core.errors import ConfigError
from stages.pipeline.dag import Plan
from stages.pipeline.config import load_config
from stages.core.dataset_formats import dataset_files
from stages.prepare import PrepareParams, prepare
from stages.ml.measures import evaluate
from stages.core.tables import read_qrels, read_queries

ROOT = Path(__file__).resolve().parent.parent
SCIFACT = ROOT / "resources" / "scifact"


@pytest.fixture(scope="module")
def slice_index(prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bm25-index")
    build_index(settings.params(Bm25IndexParams, "bm25"), {"prepared": prepared}, out)
    return out


@pytest.fixture(scope="module")
def scifact(tmp_path_factory) -> tuple[Path, Path]:
    """The full embedded SciFact, prepared (dev carved from train), and its index."""
    root = tmp_path_factory.mktemp("scifact")
    prepared, index = root / "prepared", root / "index"
    prepared.mkdir()
    index.mkdir()
    params = prepare_params(dev_fraction=0.1)
    prepare(params, dataset_files(SCIFACT, "beir", params.splits), prepared)
    build_index(settings.params(Bm25IndexParams, "bm25"), {"prepared": prepared}, index)
    return prepared, index


def all_queries(prepared: Path) -> list[str]:
    return pd.concat([read_queries(prepared, split) for split in ("train", "dev", "test")])["text"].tolist()


def test_run_format_on_the_slice(prepared, slice_index, tmp_path):
    params = settings.params(Bm25Params, "bm25", split="test", top_k=50)
    summary = bm25_run(params, {"prepared": prepared, "index": slice_index}, tmp_path)
    run = pd.read_parquet(tmp_path / "run.parquet")
    assert list(run.columns) == ["query_id", "doc_id", "rank", "score"]
    assert summary["queries"] == run["query_id"].nunique() == 20
    for _, ranked in run.groupby("query_id"):
        assert list(ranked["rank"]) == list(range(1, len(ranked) + 1))
        assert ranked["score"].is_monotonic_decreasing and (ranked["score"] > 0).all()
    first = (tmp_path / "run.trec").read_text().splitlines()[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5] == "bm25"


def test_full_scifact_matches_the_reference(scifact, tmp_path):
    prepared, index = scifact
    bm25_run(settings.params(Bm25Params, "bm25", split="test"), {"prepared": prepared, "index": index}, tmp_path)
    per_query = evaluate(pd.read_parquet(tmp_path / "run.parquet"), read_qrels(prepared, "test"), ["nDCG@10"], 1)
    assert per_query["value"].mean() == pytest.approx(0.6863, abs=1e-4)


def test_same_documents_and_scores_as_bm25s_retrieve(scifact):
    """Every SciFact query (1,109), top 100: rank by rank the same scores (1e-4 relative), the same documents above
    the last score; documents tied at the last score may differ (bm25s breaks ties arbitrarily)."""
    prepared, index_dir = scifact
    texts = all_queries(prepared)
    docs, scores = search(load_index(index_dir), texts, 100, threads=2)
    retriever = import_bm25s().BM25.load(index_dir)
    their_docs, their_scores = retriever.retrieve(tokenize(texts, "en", "english"), k=100, show_progress=False)
    identical = 0
    for mine, values, theirs, their_values in zip(docs, scores, their_docs, their_scores):
        kept = their_values > 0  # bm25s fills k documents, matching or not
        mine, values, theirs, their_values = mine[mine >= 0], values[mine >= 0], theirs[kept], their_values[kept]
        assert len(mine) == len(theirs)
        np.testing.assert_allclose(values, their_values, rtol=1e-4)
        if len(mine):
            above = values[-1] * (1 + 1e-4)
            assert set(mine[values > above]) == set(theirs[their_values > above])
        identical += set(mine) == set(theirs)
    assert identical / len(texts) > 0.99


def test_equal_scores_rank_the_lower_row_first_and_zero_scores_are_left_out():
    docs, scores = np.array([9, 4, 7, 1, 3], dtype=np.int32), np.array([2, 3, 3, 0, 3], dtype=np.float32)
    found, values = top_k(docs, scores, 2)
    assert found.tolist() == [3, 4] and values.tolist() == [3, 3]
    assert top_k(docs, scores, 5)[0].tolist() == [3, 4, 7, 9]
    rng = np.random.default_rng(0)  # a long row, where a sample's bound prunes first
    docs = rng.permutation(20000).astype(np.int32)
    scores = rng.integers(0, 40, 20000).astype(np.float32) / 4
    found, values = top_k(docs, scores, 300)
    order = np.lexsort((docs, -scores))[:300]
    assert found.tolist() == docs[order].tolist() and values.tolist() == scores[order].tolist()


def test_threads_and_batches_do_not_change_the_run(scifact, monkeypatch):
    prepared, index_dir = scifact
    index, texts = load_index(index_dir), all_queries(prepared)
    docs, scores = search(index, texts, 100, threads=1)
    monkeypatch.setattr(stages.bm25, "BATCH_POSTINGS", 5000)  # many small batches
    many_docs, many_scores = search(index, texts, 100, threads=4)
    assert np.array_equal(docs, many_docs) and np.array_equal(scores, many_scores)


def test_queries_without_a_known_term_retrieve_nothing(slice_index):
    docs, scores = search(load_index(slice_index), ["zzzqx wqxz", "the of and"], 10)
    assert (docs == -1).all() and (scores == 0).all()


def test_index_files_do_not_depend_on_the_hash_seed(prepared, tmp_path):
    """bm25s numbers stems in set order; the stage renumbers them in token order, so the files are the same."""
    hashes = []
    for seed in ("1", "2"):
        out = tmp_path / f"index-{seed}"
        params = json.dumps(vars(settings.params(Bm25IndexParams, "bm25")))
        inputs = json.dumps({"prepared": str(prepared)})
        command = [sys.executable, "-m", "stages.bm25_index", str(out), "--params", params, "--inputs", inputs]
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(command + ["--no-check-key"], check=True, capture_output=True, env=env, cwd=ROOT)
        files = sorted(p for p in out.iterdir() if p.name not in ("manifest.json", "summary.json"))
        hashes.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    assert hashes[0] == hashes[1] and "vocab.index.json" in hashes[0] and "doc_ids.parquet" in hashes[0]


def test_unusable_tokenizer_settings_are_a_config_error(prepared, tmp_path):
    with pytest.raises(ConfigError, match="stemmer='klingon'"):
        build_index(settings.params(Bm25IndexParams, "bm25", stemmer="klingon"), {"prepared": prepared}, tmp_path)


def plan_for(tmp_path: Path, dataset: Path, **sections) -> Plan:
    config = {
        "dataset": {"path": str(dataset)},
        "seeds": [1],
        "mine": {"source": "bm25"},
        "star": {"init": "base"},
        "experiments": [{"name": "bm25", "method": "bm25"}, {"name": "star", "method": "star"}],
        **sections,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return Plan(load_config(path), tmp_path / "results")


def test_one_index_serves_the_test_run_and_the_train_mining(tmp_path, scifact_slice):
    plan = plan_for(tmp_path, scifact_slice)
    test_run, mining = plan.experiments["bm25"]["bm25-test"], plan.experiments["star/seed-1"]["bm25-train"]
    index = test_run.inputs["index"]
    assert mining.inputs["index"] is index and [n for n in plan.nodes() if n.stage == "bm25_index"] == [index]
    assert set(test_run.params) == {"split", "top_k"} and mining.params["split"] == "train"
    assert index.params == {"k1": 1.5, "b": 0.75, "method": "lucene", "stopwords": "en", "stemmer": "english"}
    deeper = plan_for(tmp_path, scifact_slice, bm25={"top_k": 2000}).experiments["bm25"]["bm25-test"]
    assert deeper.inputs["index"].key == index.key and deeper.key != test_run.key  # top_k is the run's
    other = plan_for(tmp_path, scifact_slice, bm25={"k1": 1.2}).experiments["bm25"]["bm25-test"]
    assert other.inputs["index"].key != index.key  # k1 is the index's


def test_duplicate_documents_every_measure_scores_the_run_order(tmp_path):
    """SciFact's documents repeated: every judged document has identical twins with identical BM25 scores; nDCG@10
    and MRR@10 must see the same rank (with one relevant document: nDCG@10 = 1 / log2(rank + 1), MRR@10 = 1 / rank)."""
    data = tmp_path / "data"
    (data / "qrels").mkdir(parents=True)
    docs = [json.loads(line) for line in pd.read_json(SCIFACT / "corpus.jsonl.gz", lines=True).head(200).to_json(
        orient="records", lines=True).splitlines()]
    with open(data / "corpus.jsonl", "w") as handle:
        for copy in range(3):  # the original ids last, so that a doc-id tie-break would not favour them
            for doc in docs:
                doc_id = doc["_id"] if copy == 2 else f"{doc['_id']}-copy{copy}"
                handle.write(json.dumps({"_id": doc_id, "title": doc["title"], "text": doc["text"]}) + "\n")
    queries = [{"_id": f"q{i}", "text": doc["title"]} for i, doc in enumerate(docs[:40])]
    (data / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    for split, chosen in (("train", queries[:20]), ("test", queries[20:])):
        lines = [f"{q['_id']}\t{docs[int(q['_id'][1:])]['_id']}\t1" for q in chosen]
        (data / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    params = PrepareParams(format="beir", splits=["train", "test"], dev_fraction=0, dev_source="train", seed=1,
                           unknown_ids="error", empty_documents="keep")
    prepared, index, run_dir = tmp_path / "prepared", tmp_path / "index", tmp_path / "run"
    for folder in (prepared, index, run_dir):
        folder.mkdir()
    prepare(params, dataset_files(data, "beir", ["train", "test"]), prepared)
    build_index(settings.params(Bm25IndexParams, "bm25"), {"prepared": prepared}, index)
    run_params = settings.params(Bm25Params, "bm25", split="test", top_k=100)
    bm25_run(run_params, {"prepared": prepared, "index": index}, run_dir)
    run = pd.read_parquet(run_dir / "run.parquet")
    assert (run.groupby(["query_id", "score"]).size() >= 3).any()  # the twins tie
    values = evaluate(run, read_qrels(prepared, "test"), ["nDCG@10", "MRR@10"], 1).pivot(
        index="query_id", columns="measure", values="value")
    rank = 1 / values["MRR@10"].where(values["MRR@10"] > 0)
    expected = (1 / np.log2(rank + 1)).fillna(0.0)
    assert np.allclose(values["nDCG@10"], expected)
    judged = read_qrels(prepared, "test").merge(run, on=["query_id", "doc_id"]).set_index("query_id")["rank"]
    stated = (1 / judged.where(judged <= 10)).reindex(values.index).fillna(0.0)
    assert np.allclose(values["MRR@10"], stated)  # the rank the run file states, not a re-sort of tied scores
    assert values["MRR@10"].mean() > 0


@pytest.mark.parametrize("method", ["lucene", "bm25+"])
def test_the_torch_searcher_gives_the_scipy_run(prepared, method, tmp_path):
    """Every query of the slice, in batches of 7 queries and scatter calls of ~500 postings; k=300 is more than the
    slice's 210 documents, so every row ends in -1 padding; bm25+ adds each query's score for absent terms."""
    build_index(settings.params(Bm25IndexParams, "bm25", method=method), {"prepared": prepared}, tmp_path)
    index, texts = load_index(tmp_path), all_queries(prepared)
    assert (index.nonoccurrence is not None) == (method == "bm25+")
    searcher = SparseTorchSearcher(index.term_docs, index.nonoccurrence, "cpu", max_batch=7, gather=500)
    assert searcher.batch == 7 < len(texts)
    for k in (20, 300):
        docs, scores = search(index, texts, k, threads=2)
        their_docs, their_scores = search(index, texts, k, searcher=searcher)
        assert np.array_equal(docs, their_docs)  # sets, and the ranks too: ties by the lower row
        np.testing.assert_allclose(their_scores, scores, rtol=1e-5)
        assert (scores[docs >= 0] > 0).all() and (scores[docs < 0] == 0).all()
    assert (docs[:, -1] == -1).all() and (docs[:, 0] >= 0).all()


KERNEL_CHECK = """
import numpy as np, scipy.sparse as sp, torch
from stages.ml.sparse_search import SparseTorchSearcher
rng = np.random.default_rng(0)
term_docs = sp.random(60, 3000, density=0.05, format="csr", random_state=1, dtype=np.float32)  # up to 3 blocks a term
term_docs.data[:] = rng.random(term_docs.nnz, dtype=np.float32) * 3
queries = sp.random(40, 60, density=0.15, format="csr", random_state=2, dtype=np.float32)
queries.data[:] = rng.integers(1, 4, queries.nnz)  # terms twice or three times in a query too
queries.sort_indices()
device = "cuda" if torch.cuda.is_available() else "cpu"
for kernel in ("triton", "torch"):
    searcher = SparseTorchSearcher(term_docs, None, device, max_batch=16, gather=700, kernel=kernel)
    scores = torch.zeros((40, 3000), device=device)
    for start in range(0, 40, 16):
        searcher.scatter(scores[start:start + 16], queries[start:start + 16])
    if kernel == "triton":
        fused = scores.cpu().numpy()
    else:
        assert np.array_equal(fused, scores.cpu().numpy())  # bitwise: same sums in the same order
expected = (queries @ term_docs).toarray()
assert np.allclose(fused, expected, rtol=1e-6) and (fused > 0).sum() == (expected > 0).sum()
print("ok")
"""


def test_the_triton_scatter_gives_the_torch_scores_bitwise():
    """On a GPU for real; without one in Triton's CPU interpreter (a fresh process: it is chosen at import)."""
    pytest.importorskip("triton")
    env = os.environ | ({} if torch.cuda.is_available() else {"TRITON_INTERPRET": "1"})
    result = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_the_scatter_kernel_is_chosen_by_device():
    cpu = torch.device("cpu")
    assert sparse_search.scatter_kernel("auto", cpu) == "torch"
    assert sparse_search.scatter_kernel("triton", cpu) == "triton"  # Triton's interpreter runs it on the CPU
    with pytest.raises(ValueError, match="auto"):
        sparse_search.scatter_kernel("cuda", cpu)


def test_ties_at_the_kth_score_keep_the_lowest_rows():
    """Rows with long runs of equal scores: the torch top k is the CPU path's `top_k`, also where topk's own pick
    among the tied documents would be another (`settle_ties` given the highest rows)."""
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, (9, 400)).astype(np.float32) / 2  # a sixth of them 0: no document
    found, values = sparse_search.top_k(torch.from_numpy(scores), 50, chunk=2)
    for row in range(len(scores)):
        expected = top_k(np.arange(400, dtype=np.int32), scores[row], 50)
        assert found[row].tolist() == expected[0].tolist() and values[row].tolist() == expected[1].tolist()
    row = torch.tensor([5.0, 3.0, 3.0, 3.0, 3.0, 1.0])[None, :]
    values, picked = torch.tensor([[5.0, 3.0, 3.0]]), torch.tensor([[0, 4, 3]])  # the highest tied rows
    settle_ties(row, values, picked, torch.tensor([0]), chunk=1)
    assert picked.tolist() == [[0, 1, 2]]


def test_batches_fit_the_memory_and_the_32_bit_index():
    cpu = torch.device("cpu")
    assert batch_size(1000, cpu) == sparse_search.MAX_BATCH and batch_size(1000, cpu, limit=5) == 5
    documents = sparse_search.HOST_MEMORY // (sparse_search.BYTES_PER_SCORE * 10)
    assert batch_size(documents, cpu) == 10
    assert batch_size(10**12, cpu) == 1  # no room for one row: batches of one (a warning)


def test_no_gpu_is_decided_without_torch(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not gpu_may_be_visible()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert not gpu_may_be_visible()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # torch must tell
    assert gpu_may_be_visible()


def test_the_stage_without_a_gpu_imports_no_torch(prepared, slice_index, tmp_path):
    """The stage started as its rule starts it (through `stages.core.launch`, a GPU stage) on a machine without
    nvidia-smi nor CUDA_VISIBLE_DEVICES: the scipy backend, and no torch among the imports (-X importtime)."""
    out, bin_dir = tmp_path / "run", tmp_path / "bin"
    bin_dir.mkdir()
    params = json.dumps(vars(settings.params(Bm25Params, "bm25", split="test", top_k=10)))
    inputs = json.dumps({"prepared": str(prepared), "index": str(slice_index)})
    command = STAGES["bm25"].command([str(out), "--params", params, "--inputs", inputs, "--no-check-key"])
    assert "stages.core.launch" in command
    env = {key: value for key, value in os.environ.items() if key not in ("CUDA_VISIBLE_DEVICES", "HARDNEG_GPU_IDS")}
    env |= {"PATH": str(bin_dir), "PYTHONPROFILEIMPORTTIME": "1", "HARDNEG_GPU_LOCKS": str(tmp_path / "locks")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "scipy.sparse" in imported and not {name for name in imported if name.split(".")[0] == "torch"}
    assert json.loads((out / "summary.json").read_text())["backend"] == "scipy"
