"""Datasets read by id, offline, on fixtures built in each library's own format: a tiny ir_datasets dataset registered
with a filled cache, a Hugging Face Hub cache in BEIR's layout, and a `save_to_disk` folder in Tevatron's layout."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import datasets
import ir_datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from ir_datasets.formats import TrecQrels, TsvDocs, TsvQueries
from ir_datasets.util import Download, RequestsDownload

from stages.core.errors import ConfigError, DataError
from stages.core.tables import read_negatives
from stages.pipeline.dag import Plan
from stages.pipeline.config import load_config
from stages.prepare import main as prepare_main
from stages.prepare import HubPrepareParams, prepare

DOCS = {"d1": "alpha text", "d2": "beta text", "d3": "gamma text"}
QUERIES = {"train": {"q1": "alpha?"}, "test": {"q2": "beta?"}}
QRELS = {"train": [("q1", "d1", 1)], "test": [("q2", "d2", 1)]}


def plan_of(tmp_path: Path, dataset: dict, experiments=None, **sections) -> Plan:
    config = {
        "dataset": {"splits": ["train", "test"], "dev_fraction": 0, **dataset},
        "experiments": experiments or [{"name": "bm25", "method": "bm25"}],
        **sections,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return Plan(load_config(path), tmp_path / "results")


def run_prepare(plan: Plan, out: Path) -> dict:
    node = plan.experiments["bm25"]["prepare"]
    out.mkdir()
    inputs = {name: Path(path) for name, path in node.input_paths(plan.results).items()}
    return prepare(HubPrepareParams(**node.params), inputs, out)


def assert_prepared(out: Path) -> None:
    corpus = pd.read_parquet(out / "corpus.parquet")
    assert sorted(corpus["doc_id"]) == sorted(DOCS)
    assert dict(zip(corpus["doc_id"], corpus["text"]))["d2"] == "beta text"
    queries = pd.read_parquet(out / "queries.parquet")
    assert sorted(zip(queries["split"], queries["query_id"])) == [("test", "q2"), ("train", "q1")]
    qrels = pd.read_parquet(out / "qrels.parquet")
    assert sorted(zip(qrels["split"], qrels["query_id"], qrels["doc_id"])) == [
        ("test", "q2", "d2"),
        ("train", "q1", "d1"),
    ]


# --- ir_datasets --------------------------------------------------------------------------------------------------
def cached_file(tmp_path: Path, name: str, text: str | None) -> Download:
    """A download ir_datasets would fetch from the network, its cache filled with ``text`` (None: not cached)."""
    path = tmp_path / "irds-cache" / name
    if text is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Download([RequestsDownload(f"https://example.invalid/{name}")], cache_path=str(path))


def register_irds(tmp_path: Path, cached: bool = True) -> str:
    """A tiny collection with train and test splits, registered under a fresh id."""
    name = f"hardneg-test/{tmp_path.name}-{time.monotonic_ns()}"
    docs = "".join(f"{d}\t{t}\n" for d, t in DOCS.items()) if cached else None
    ir_datasets.registry.register(name, ir_datasets.Dataset(TsvDocs(cached_file(tmp_path, "docs.tsv", docs))))
    for split in ("train", "test"):
        queries = "".join(f"{q}\t{t}\n" for q, t in QUERIES[split].items())
        qrels = "".join(f"{q} 0 {d} {r}\n" for q, d, r in QRELS[split])
        ir_datasets.registry.register(
            f"{name}/{split}",
            ir_datasets.Dataset(
                TsvDocs(cached_file(tmp_path, "docs.tsv", docs)),
                TsvQueries(cached_file(tmp_path, f"{split}-queries.tsv", queries)),
                TrecQrels(cached_file(tmp_path, f"{split}-qrels.txt", qrels), {0: "no", 1: "yes"}),
            ),
        )
    return name


def test_ir_datasets_reads_a_cached_dataset_and_keys_it_by_id_version_and_cached_files(tmp_path):
    dataset_id = register_irds(tmp_path)
    plan = plan_of(tmp_path, {"format": "ir_datasets", "id": dataset_id})
    node = plan.experiments["bm25"]["prepare"]
    dataset = node.params["datasets"]["dataset"]
    assert (dataset["id"], dataset["revision"]) == (dataset_id, f"ir_datasets {ir_datasets.__version__}")
    assert len(dataset["cache"]) == 16 and node.inputs == {}
    run_prepare(plan, tmp_path / "out")
    assert_prepared(tmp_path / "out")


def test_documents_replaced_in_the_ir_datasets_cache_change_the_prepare_key(tmp_path):
    dataset_id = register_irds(tmp_path)
    before = plan_of(tmp_path, {"format": "ir_datasets", "id": dataset_id}).experiments["bm25"]["prepare"].key
    assert plan_of(tmp_path, {"format": "ir_datasets", "id": dataset_id}).experiments["bm25"]["prepare"].key == before
    docs = tmp_path / "irds-cache" / "docs.tsv"
    docs.write_text(docs.read_text().replace("\t", "\tother words: ", 1))
    after = plan_of(tmp_path, {"format": "ir_datasets", "id": dataset_id}).experiments["bm25"]["prepare"].key
    assert after != before


def test_ir_datasets_not_in_the_cache_fails_at_plan_time_with_the_fix(tmp_path):
    dataset_id = register_irds(tmp_path, cached=False)
    started = time.monotonic()
    with pytest.raises(DataError, match="not in the ir_datasets cache") as error:
        plan_of(tmp_path, {"format": "ir_datasets", "id": dataset_id})
    assert time.monotonic() - started < 5  # no request, no retries
    assert f"ir_datasets export {dataset_id} docs" in error.value.fix and "dataset.format: beir" in error.value.fix


def test_an_unknown_ir_datasets_id_or_split_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not an ir_datasets id"):
        plan_of(tmp_path, {"format": "ir_datasets", "id": "no-such/dataset"})
    dataset_id = register_irds(tmp_path)
    with pytest.raises(ConfigError, match="no queries and qrels for split 'dev'"):
        plan_of(
            tmp_path,
            {"format": "ir_datasets", "id": dataset_id, "splits": ["train", "dev"]},
            evaluate={"splits": ["dev"]},
        )


# --- Hugging Face: a Hub cache in BEIR's layout -------------------------------------------------------------------
BEIR_README = """---
configs:
- config_name: corpus
  data_files:
  - split: corpus
    path: corpus/corpus-*
- config_name: queries
  data_files:
  - split: queries
    path: queries/queries-*
---
"""


def hub_snapshot(cache: Path, repo_id: str, commit: str) -> Path:
    """The folder of ``repo_id`` at ``commit`` in a Hugging Face Hub cache, as `hf download` leaves it."""
    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    snapshot = hub_snapshot(cache, "org/tiny", "a" * 40)
    (snapshot / "README.md").write_text(BEIR_README)
    for config, table in {
        "corpus": {"_id": list(DOCS), "title": [""] * len(DOCS), "text": list(DOCS.values())},
        "queries": {"_id": ["q1", "q2"], "text": ["alpha?", "beta?"]},
    }.items():
        (snapshot / config).mkdir()
        pq.write_table(pa.table(table), snapshot / config / f"{config}-00000-of-00001.parquet")
    qrels = hub_snapshot(cache, "org/tiny-qrels", "b" * 40)
    for split, rows in QRELS.items():
        (qrels / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{r}\n" for q, d, r in rows)
        )
    return cache


def test_hf_beir_layout_from_the_hub_cache_is_keyed_by_its_commits(tmp_path, hub_cache):
    plan = plan_of(tmp_path, {"format": "hf", "id": "org/tiny", "qrels": "org/tiny-qrels"})
    node = plan.experiments["bm25"]["prepare"]
    assert node.params["datasets"] == {
        "dataset": {"id": "org/tiny", "revision": "a" * 40},
        "qrels": {"id": "org/tiny-qrels", "revision": "b" * 40},
    }
    run_prepare(plan, tmp_path / "out")
    assert_prepared(tmp_path / "out")


def test_hf_dataset_not_in_the_cache_names_the_download_command(tmp_path, hub_cache):
    with pytest.raises(DataError, match="not a Hugging Face dataset in the local cache") as error:
        plan_of(tmp_path, {"format": "hf", "id": "org/absent"})
    assert "hf download org/absent --repo-type dataset" in error.value.fix


def test_hf_folders_the_datasets_library_refuses_fail_at_plan_time(tmp_path, hub_cache):
    scripted = hub_snapshot(hub_cache, "org/scripted", "c" * 40)  # a Hub dataset that is only its loading script
    (scripted / "scripted.py").write_text("import datasets\n")
    with pytest.raises(DataError, match=r"dataset.id: a dataset with a loading script \(scripted.py\)"):
        plan_of(tmp_path, {"format": "hf", "id": "org/scripted"})
    local = tmp_path / "local"
    (local / "corpus").mkdir(parents=True)
    pq.write_table(pa.table({"_id": ["d1"], "text": ["alpha"]}), local / "corpus" / "corpus.parquet")
    (local / "helpers.py").write_text("")  # a script of another name beside data files: datasets reads the data
    plan_of(tmp_path, {"format": "hf", "path": str(local)})
    (local / "local.py").write_text("")  # the folder's own script: datasets refuses the folder
    with pytest.raises(DataError, match="dataset.path: a dataset with a loading script") as error:
        plan_of(tmp_path, {"format": "hf", "path": str(local)})
    assert "save_to_disk" in error.value.fix
    hidden = tmp_path / "hidden"
    (hidden / ".cache").mkdir(parents=True)
    (hidden / ".cache" / "x.lock").write_text("")
    (hidden / "README.md").write_text("# nothing\n")
    with pytest.raises(DataError, match="dataset.path: no data files"):
        plan_of(tmp_path, {"format": "hf", "path": str(hidden)})


# --- Hugging Face: a save_to_disk folder in Tevatron's layout -----------------------------------------------------
def passage(doc_id: str) -> dict:
    return {"docid": doc_id, "title": "", "text": DOCS[doc_id]}


def tevatron_folder(tmp_path: Path) -> Path:
    rows = {
        "train": [{"query_id": "q1", "query": "alpha?", "positive_passages": [passage("d1")],
                   "negative_passages": [passage("d3"), passage("d1")]}],
        "test": [{"query_id": "q2", "query": "beta?", "positive_passages": [passage("d2")], "negative_passages": []}],
    }  # fmt: skip
    folder = tmp_path / "tevatron"
    datasets.DatasetDict({split: datasets.Dataset.from_list(r) for split, r in rows.items()}).save_to_disk(str(folder))
    return folder


def test_hf_tevatron_layout_gives_the_corpus_and_its_negatives(tmp_path):
    folder = tevatron_folder(tmp_path)
    plan = plan_of(tmp_path, {"format": "hf", "path": str(folder), "layout": "tevatron"})
    node = plan.experiments["bm25"]["prepare"]
    assert node.params["datasets"] == {} and set(node.inputs) == {"dataset"}  # a folder: keyed by its content
    run_prepare(plan, tmp_path / "out")
    assert_prepared(tmp_path / "out")
    assert read_negatives(tmp_path / "out") == {"q1": ["d3"]}  # the given negatives minus the query's positive


def test_mine_source_given_feeds_the_datasets_negatives_to_star(tmp_path):
    folder = tevatron_folder(tmp_path)
    experiments = [{"name": "star", "method": "star"}]
    dataset = {"format": "hf", "path": str(folder), "layout": "tevatron"}
    plan = plan_of(tmp_path, dataset, experiments, mine={"source": "given"}, star={"init": "base"})
    star = plan.experiments["star/seed-42"]["star"]
    assert star.inputs["negatives"] is star.inputs["prepared"]
    assert not [node for node in plan.nodes() if node.stage == "mine_negatives"]
    with pytest.raises(ConfigError, match="given needs a dataset that carries negatives"):
        plan_of(tmp_path, {**dataset, "layout": "beir"}, experiments, mine={"source": "given"}, star={"init": "base"})


def test_the_prepare_command_takes_the_hub_params(tmp_path):
    folder = tevatron_folder(tmp_path)
    plan = plan_of(tmp_path, {"format": "hf", "path": str(folder), "layout": "tevatron"})
    node = plan.experiments["bm25"]["prepare"]
    out = tmp_path / "artifact"
    argv = [str(out), "--params", json.dumps(node.params), "--inputs", json.dumps(node.input_paths()), "--no-check-key"]
    assert prepare_main(argv) == 0
    assert_prepared(out)


def test_a_missing_extra_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ir_datasets", None)
    with pytest.raises(ConfigError, match="needs the Python package 'ir_datasets'") as error:
        plan_of(tmp_path, {"format": "ir_datasets", "id": "beir/scifact"})
    assert ".[datasets]" in error.value.fix
