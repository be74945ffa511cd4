"""The dataset format registry (`stages.core.dataset_formats`): each format finds and checks its inputs, an unknown
format or layout is an error listing the allowed ones, and a new format is one entry that the plan and `prepare`
pick up."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import prepare_params
from stages.core import dataset_formats
from stages.core.dataset_formats import FORMATS, DatasetFormat, dataset_files, dataset_format, locate_folder
from stages.core.dataset_records import judgments_frame, queries_frame
from stages.core.errors import ConfigError, DataError
from stages.pipeline.dag import Plan
from stages.pipeline.config import load_config
from stages.prepare import HubPrepareParams, PrepareParams, main, params_class, prepare

FOLDERS = {
    "beir": ["corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"],
    "msmarco": ["collection.tsv", "queries.train.tsv", "queries.test.tsv", "qrels.train.tsv", "qrels.test.tsv"],
}


def folder_with(root: Path, files: list[str]) -> Path:
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    return root


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_a_folder_format_finds_its_files_and_names_the_first_missing_one(tmp_path, name):
    files = FOLDERS[name]
    found = dataset_files(folder_with(tmp_path / "all", files), name, ["train", "test"])
    assert sorted(path.relative_to(tmp_path / "all").as_posix() for path in found.values()) == sorted(files)
    for missing in files:
        root = folder_with(tmp_path / missing.replace("/", "-"), [f for f in files if f != missing])
        with pytest.raises(DataError) as caught:
            dataset_files(root, name, ["train", "test"])
        assert caught.value.path == str(root / missing) and "dataset.path" in caught.value.fix


def test_beir_reads_a_gzipped_corpus(tmp_path):
    root = folder_with(tmp_path, ["corpus.jsonl.gz", "queries.jsonl", "qrels/train.tsv"])
    assert dataset_files(root, "beir", ["train"])["corpus"] == root / "corpus.jsonl.gz"


# each format: a dataset section whose input is not there, and what the error names
MISSING = {
    "beir": ({}, DataError, "corpus.jsonl"),
    "msmarco": ({}, DataError, "collection.tsv"),
    "ir_datasets": ({"id": "no-such/dataset"}, ConfigError, "'no-such/dataset' is not an ir_datasets id"),
    "hf": ({"path": "absent-folder"}, DataError, "'absent-folder' is not a local folder"),
}


def test_every_format_has_a_missing_input_case():
    assert sorted(MISSING) == sorted(FORMATS)


@pytest.mark.parametrize("name", sorted(MISSING))
def test_every_format_checks_its_inputs_when_located(tmp_path, monkeypatch, name):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    monkeypatch.chdir(tmp_path)
    overrides, error, named = MISSING[name]
    dataset = {"format": name, "path": str(tmp_path), "splits": ["train", "test"], "layout": "beir", **overrides}
    with pytest.raises(error) as caught:
        dataset_format(name).locate(dataset)
    assert named in caught.value.render()


def test_an_unknown_format_or_layout_lists_the_allowed_values():
    with pytest.raises(ConfigError) as caught:
        dataset_format("csv")
    assert str(sorted(FORMATS)) in caught.value.message and "dataset.format" in caught.value.fix
    with pytest.raises(ConfigError) as caught:
        FORMATS["hf"].layout("flat")
    assert "['beir', 'tevatron']" in caught.value.message and "dataset.layout" in caught.value.fix
    assert FORMATS["beir"].layout("flat") is None  # a format without layouts ignores the setting


def test_prepare_refuses_an_unknown_format_or_layout_instead_of_reading_another(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"dataset.format: unknown value 'csv'"):
        prepare(prepare_params(format="csv"), {}, tmp_path)
    out = tmp_path / "results" / "prepare" / "artifact"
    params = json.dumps(vars(prepare_params(format="csv")))
    assert main([str(out), "--params", params, "--inputs", "{}", "--no-check-key"]) == 2
    assert "dataset.format: unknown value 'csv'; allowed: ['beir', 'hf'" in capsys.readouterr().err
    params = HubPrepareParams(**vars(prepare_params(format="hf")), layout="flat", datasets={})
    with pytest.raises(ConfigError, match=r"dataset.layout: unknown value 'flat'"):
        prepare(params, {"dataset": tmp_path}, tmp_path)
    with pytest.raises(ConfigError, match="takes HubPrepareParams"):
        prepare(prepare_params(format="hf"), {"dataset": tmp_path}, tmp_path)


def test_the_params_class_and_negatives_are_the_formats():
    classes = {name: params_class(["--params", json.dumps({"format": name})]) for name in FORMATS}
    assert classes == {"beir": PrepareParams, "msmarco": PrepareParams, "ir_datasets": HubPrepareParams,
                       "hf": HubPrepareParams}  # fmt: skip
    assert params_class(["--params", json.dumps({"format": "csv"})]) is PrepareParams  # prepare then names it
    carriers = [(f, layout) for f in FORMATS for layout in ("beir", "tevatron") if FORMATS[f].carries_negatives(layout)]
    assert carriers == [("hf", "tevatron")]
    assert dataset_formats.with_negatives() == ["dataset.format: hf with dataset.layout: tevatron"]


# --- what a new format takes: one registry entry (and the schema's enum), with its reader -------------------------
class ToyTables:
    """One file, toy.json: {"docs": {id: text}, "queries": {split: {id: text}}, "qrels": {split: [[q, d, rel]]}}."""

    def __init__(self, params, inputs):
        self.path = inputs["toy"]
        self.data = json.loads(Path(self.path).read_text())

    def corpus(self):
        return ((n, d, "", text) for n, (d, text) in enumerate(self.data["docs"].items(), 1)), self.path

    def queries(self, split):
        found = enumerate(self.data["queries"][split].items(), 1)
        return queries_frame(((n, q, text) for n, (q, text) in found), self.path), self.path

    def qrels(self, split):
        found = enumerate(self.data["qrels"][split], 1)
        return (*judgments_frame(((n, *judgment) for n, judgment in found), self.path), self.path)

    def negatives(self, split):
        return None


TOY = DatasetFormat("toy", partial(locate_folder, lambda root, splits: {"toy": root / "toy.json"}), ToyTables)


def test_a_new_format_is_one_registry_entry_for_the_plan_and_prepare(tmp_path, monkeypatch):
    monkeypatch.setitem(FORMATS, "toy", TOY)
    root = tmp_path / "toy"
    root.mkdir()
    data = {
        "docs": {"d1": "alpha text", "d2": "beta text"},
        "queries": {"train": {"q1": "alpha?"}, "test": {"q2": "beta?"}},
        "qrels": {"train": [["q1", "d1", 1]], "test": [["q2", "d2", 1]]},
    }
    (root / "toy.json").write_text(json.dumps(data))
    config_file = tmp_path / "config.yaml"
    dataset = {"path": str(root), "splits": ["train", "test"], "dev_fraction": 0}
    config_file.write_text(yaml.safe_dump({"dataset": dataset, "experiments": [{"name": "bm25", "method": "bm25"}]}))
    config = load_config(config_file)
    config["dataset"]["format"] = "toy"  # past the schema, whose enum would otherwise name it too

    node = Plan(config, tmp_path / "results").experiments["bm25"]["prepare"]
    assert node.params["format"] == "toy" and list(node.inputs) == ["toy"]
    assert params_class(["--params", json.dumps(node.params)]) is PrepareParams
    out = tmp_path / "out"
    out.mkdir()
    prepare(PrepareParams(**node.params), {name: Path(p) for name, p in node.input_paths().items()}, out)
    assert sorted(pd.read_parquet(out / "corpus.parquet")["doc_id"]) == ["d1", "d2"]
    assert len(pd.read_parquet(out / "qrels.parquet")) == 2

    (root / "toy.json").unlink()
    with pytest.raises(DataError, match="dataset file for 'toy' not found"):
        Plan(config, tmp_path / "results")
