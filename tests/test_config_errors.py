"""Config mistakes stop the plan at once, naming the key: non-finite numbers, max lengths beyond the model, Hub ids
that are not in the local cache; YAML 1.1's text for 1e-5 is a number; a cached Hub id's revision is in the keys."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stages.core.errors import ConfigError
from stages.core.model_source import position_limit
from stages.pipeline.dag import Chain, Plan, RawFile
from stages.pipeline.config import load_config

ROOT = Path(__file__).resolve().parent.parent
COMMITS = ("a" * 40, "b" * 40)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def config_text(dataset: Path, model: str = "bundled", extra: str = "", experiment: str = "zeroshot") -> str:
    return (
        f"dataset: {{path: {dataset}}}\nencoder: {{model: {model}}}\n{extra}\n"
        f"experiments:\n  - {{name: x, method: {experiment}}}\n"
    )


def plan_of(tmp_path: Path, text: str, results: str = "results") -> Plan:
    return Plan(load_config(write(tmp_path, text)), tmp_path / results)


# --- numbers and measures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        ("bm25: {k1: .nan}", "bm25.k1: nan is not a finite number"),
        ("warmup: {learning_rate: .inf}", "warmup.learning_rate: inf is not a finite number"),
        ("adore: {temperature: -.inf}", "adore.temperature: -inf is not a finite number"),
        ("score: {measures: [nDCG@10, nosuch@3]}", "score.measures[1]: unknown measure 'nosuch@3'"),
        ("report: {measures: [NumRet]}", "report.measures[0]: measure 'NumRet' is not averaged over queries"),
        ("star: {eval_measure: ndcg}", "star.eval_measure: unknown measure 'ndcg'"),
    ],
)
def test_non_finite_numbers_and_unknown_measures_are_refused_naming_the_key(tmp_path, scifact_slice, extra, message):
    assert_refused(tmp_path, scifact_slice, extra, message)


def assert_refused(tmp_path: Path, dataset: Path, extra: str, message: str) -> None:
    """A bm25 config with ``extra`` lines is refused with ``message`` (literal)."""
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        load_config(write(tmp_path, config_text(dataset, extra=extra, experiment="bm25")))


def test_nan_in_an_experiments_override_is_refused_naming_it(tmp_path, scifact_slice):
    experiment = "{name: x, method: bm25, params: {bm25: {b: .nan}}}"
    text = f"dataset: {{path: {scifact_slice}}}\nexperiments:\n  - {experiment}\n"
    with pytest.raises(ConfigError, match=r"experiments\[0\]\.params\.bm25\.b: nan is not a finite number"):
        load_config(write(tmp_path, text))


def test_any_ir_measures_measure_averaged_over_queries_is_a_measure(tmp_path, scifact_slice):
    extra = "score: {measures: [P@5, nDCG@20, RR(rel=2)@10]}\nreport: {measures: [P@5]}"
    config = load_config(write(tmp_path, config_text(scifact_slice, extra=extra, experiment="bm25")))
    assert config["score"]["measures"] == ["P@5", "nDCG@20", "RR(rel=2)@10"]


# --- bounds -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rounds", [200, 100000])
def test_ance_rounds_beyond_the_bound_are_refused_at_once(tmp_path, scifact_slice, rounds):
    assert_refused(tmp_path, scifact_slice, f"ance: {{rounds: {rounds}}}", f"ance.rounds: {rounds} is greater than")


def test_the_most_ance_rounds_plan_without_recursion(tmp_path, scifact_slice):
    text = config_text(scifact_slice, extra="ance: {rounds: 100}", experiment="ance")
    plan = plan_of(tmp_path, text)
    assert sum(node.stage == "train_star" for node in plan.nodes()) == 101  # rounds 0..100
    assert len(plan.report.params["rows"][0]["costs"]) > 500  # every round's artifacts, gathered iteratively


@pytest.mark.parametrize("name", [".", "..", "...", "a/b"])
def test_experiment_names_that_are_not_folder_names_are_refused(tmp_path, scifact_slice, name):
    text = f"dataset: {{path: {scifact_slice}}}\nexperiments:\n  - {{name: '{name}', method: bm25}}\n"
    with pytest.raises(ConfigError, match=r"experiments\[0\]\.name: .* is not allowed: letters, digits"):
        load_config(write(tmp_path, text))


def test_float_literals_yaml_reads_as_text_are_numbers(tmp_path, scifact_slice):
    assert yaml.safe_load("x: 1e-5")["x"] == "1e-5"  # YAML 1.1: no dot, so not a float
    text = (
        f"dataset: {{path: {scifact_slice}}}\nstar: {{learning_rate: 1e-5}}\nbm25: {{k1: 12E-1}}\n"
        "experiments:\n  - {name: s, method: star, params: {star: {weight_decay: 1e-3}}}\n"
    )
    config = load_config(write(tmp_path, text))
    assert config["star"]["learning_rate"] == 1e-5 and config["bm25"]["k1"] == 1.2
    star = Plan(config, tmp_path / "results").experiments["s/seed-42"]["star"]
    assert star.params["learning_rate"] == 1e-5 and star.params["weight_decay"] == 1e-3
    with pytest.raises(ConfigError, match="star.learning_rate: 'fast' should be of type number"):
        load_config(write(tmp_path, text.replace("1e-5", "fast")))
    with pytest.raises(ConfigError, match="should be of type integer"):  # only where a number is wanted
        load_config(write(tmp_path, text + "score: {seed: 1e3}\n"))


def snakemake_dry_run(workdir: Path, text: str, **env: str) -> subprocess.CompletedProcess:
    (workdir / "config.yaml").write_text(text)
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "-n"]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PATH": path, **env})


def test_the_snakefile_reads_numbers_and_stops_on_bad_ones_without_a_traceback(tmp_path, scifact_slice):
    star = config_text(scifact_slice, extra="star: {learning_rate: 1e-5}", experiment="star")
    fine = snakemake_dry_run(tmp_path, star)
    assert fine.returncode == 0, fine.stderr
    nan = snakemake_dry_run(tmp_path, config_text(scifact_slice, extra="bm25: {k1: .nan}", experiment="bm25"))
    assert nan.returncode != 0 and "bm25.k1: nan is not a finite number" in nan.stderr
    began = time.monotonic()
    hub = snakemake_dry_run(tmp_path, config_text(scifact_slice, model="some-org/absent"), HF_HUB_CACHE=str(tmp_path))
    assert hub.returncode != 0 and "encoder.model: 'some-org/absent'" in hub.stderr and "hf download" in hub.stderr
    assert time.monotonic() - began < 30 and "Traceback" not in nan.stderr + hub.stderr


# --- lengths ---------------------------------------------------------------------------------------------------------


def test_max_lengths_beyond_the_models_positions_stop_the_plan(tmp_path, scifact_slice, tiny_model_dir):
    extra = "encoder: {model: bundled, doc_max_length: 100000}"
    text = f"dataset: {{path: {scifact_slice}}}\n{extra}\nexperiments:\n  - {{name: x, method: zeroshot}}\n"
    with pytest.raises(ConfigError, match=r"encoder\.doc_max_length: 100000 .* model 'bundled' takes \(512"):
        plan_of(tmp_path, text)
    override = "{name: y, method: star, params: {encoder: {query_max_length: 513}}}"
    text = f"dataset: {{path: {scifact_slice}}}\nencoder: {{model: {tiny_model_dir}}}\nexperiments:\n  - {override}\n"
    with pytest.raises(ConfigError, match=r"experiments\[0\] \(y\): params\.encoder\.query_max_length: 513") as error:
        plan_of(tmp_path, text)
    assert str(tiny_model_dir) in str(error.value) and "at most 512" in str(error.value)
    plan_of(tmp_path, text.replace("513", "512"))  # the limit itself is fine


def test_position_limit_leaves_roberta_its_padding_offset(tmp_path):
    roberta = '{"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}'
    (tmp_path / "config.json").write_text(roberta)
    assert position_limit(tmp_path) == 512
    (tmp_path / "config.json").write_text('{"model_type": "bert", "max_position_embeddings": 512}')
    assert position_limit(tmp_path) == 512
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    assert position_limit(tmp_path) is None


# --- Hub ids ---------------------------------------------------------------------------------------------------------


def fake_hub_cache(cache: Path, model: Path, repo: str, commit: str) -> Path:
    """``repo`` in a Hugging Face cache layout: refs/main naming the commit, the model files in its snapshot."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    if not snapshot.is_dir():
        shutil.copytree(model, snapshot)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_hub_id_missing_from_the_local_cache_fails_at_once_with_the_fix(tmp_path, scifact_slice, hub_cache):
    began = time.monotonic()
    with pytest.raises(ConfigError, match="encoder.model: 'some-org/absent' is not 'bundled'") as error:
        plan_of(tmp_path, config_text(scifact_slice, model="some-org/absent"))
    assert time.monotonic() - began < 5
    assert str(hub_cache) in str(error.value) and "hf download some-org/absent" in error.value.fix
    assert "local model folder" in error.value.fix
    plan_of(tmp_path, config_text(scifact_slice, model="some-org/absent", experiment="bm25"))  # bm25 needs no model


def test_a_cached_hub_id_pins_its_revision_in_every_key_using_it(tmp_path, scifact_slice, hub_cache, tiny_model_dir):
    repo, text = "some-org/tiny", config_text(scifact_slice, model="some-org/tiny", experiment="star")
    fake_hub_cache(hub_cache, tiny_model_dir, repo, COMMITS[0])
    first = plan_of(tmp_path, text)
    refs = hub_cache / "models--some-org--tiny" / "refs" / "main"
    roles = first.experiments["x/seed-42"]
    assert roles["warmup"].inputs["base_model"].path == refs and roles["tokenize"].inputs["base_model"].path == refs
    fake_hub_cache(hub_cache, tiny_model_dir, repo, COMMITS[1])  # the cache moves on to a new revision
    second = plan_of(tmp_path, text, "results-2")  # a hash cache of its own: refs/main keeps its size
    unchanged = {(n.stage, n.key) for n in first.nodes()} & {(n.stage, n.key) for n in second.nodes()}
    dense = {"tokenize", "encode", "index", "retrieve", "train_warmup", "train_star", "score", "report"}
    assert ("prepare", first.experiments["x/seed-42"]["prepare"].key) in unchanged
    assert not dense & {stage for stage, _ in unchanged}  # every key that depends on the model changed


def test_stages_load_a_cached_hub_id_offline(hub_cache, tiny_model_dir, monkeypatch):
    from stages.ml.models import load_encoder, load_tokenizer, resolve_model

    snapshot = fake_hub_cache(hub_cache, tiny_model_dir, "some-org/tiny", COMMITS[0])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("some-org/tiny") == str(snapshot)
    assert load_encoder("some-org/tiny").dim == 32 and load_tokenizer("some-org/tiny").vocab_size > 1000
    with pytest.raises(ConfigError, match="not a Hugging Face Hub model in the local cache"):
        resolve_model("some-org/absent")


def test_bundled_and_local_folder_keys_are_those_of_before(tmp_path, scifact_slice, tiny_model_dir, monkeypatch):
    texts = [config_text(scifact_slice, model=m, experiment="star") for m in ("bundled", str(tiny_model_dir))]
    now = [{(n.stage, n.key) for n in plan_of(tmp_path, text).nodes()} for text in texts]

    def before(chain: Chain) -> dict:  # the rule before Hub ids were pinned
        model = chain.section("encoder")["model"]
        return {"base_model": RawFile(Path(model), chain.plan.cache)} if Path(model).is_dir() else {}

    monkeypatch.setattr(Chain, "base_model_inputs", before)
    assert now == [{(n.stage, n.key) for n in plan_of(tmp_path, text).nodes()} for text in texts]
