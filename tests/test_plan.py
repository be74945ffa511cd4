"""The plan without Snakemake: every node's params are exactly its stage's fields; seeds and sharing."""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter

import pytest
import yaml

from stages.core.errors import ConfigError
from stages.core.workflow_files import workflow_root
from stages.pipeline.dag import Plan
from stages.pipeline.config import load_config, load_configs
from stages.pipeline.run_plan import stage_entry

EXPERIMENTS = [
    {"name": "bm25", "method": "bm25"},
    {"name": "zeroshot", "method": "zeroshot"},
    {"name": "warmup", "method": "warmup"},
    {"name": "star", "method": "star"},
    {"name": "star-pq", "method": "star", "params": {"index": {"kind": "pq"}}},
    {"name": "randneg", "method": "star", "seeds": [5], "params": {"star": {"negatives": "randneg", "init": "base"}}},
    {"name": "adore-star", "method": "adore", "documents": "star"},
    {"name": "adore-star-pq", "method": "adore", "documents": "star",
     "params": {"index": {"kind": "pq"}, "adore": {"pq_scoring": "uncompressed"}}},
    {"name": "adore-zeroshot", "method": "adore", "documents": "zeroshot", "seeds": [1]},
]  # fmt: skip


def plan_for(tmp_path, scifact_slice, experiments=EXPERIMENTS, **sections) -> Plan:
    config = {"dataset": {"path": str(scifact_slice)}, "seeds": [1, 2], "experiments": experiments, **sections}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return Plan(load_config(path), tmp_path / "results")


def params_class(stage: str):
    module = sys.modules[stage_entry(stage).main.__module__]  # the stage module, or a package stage's that has main
    found = [v for k, v in vars(module).items() if k.endswith("Params") and isinstance(v, type)]  # its own or imported
    (cls,) = [c for c in found if not any(c is not other and issubclass(c, other) for other in found)]  # the base
    return cls


def test_every_node_passes_exactly_its_stage_params(tmp_path, scifact_slice):
    plan = plan_for(tmp_path, scifact_slice)
    for node in plan.nodes():
        fields = {field.name for field in dataclasses.fields(params_class(node.stage))}
        assert set(node.params) == fields, node.stage


def test_trained_methods_run_per_seed_and_share_untrained_upstream(tmp_path, scifact_slice):
    plan = plan_for(tmp_path, scifact_slice)
    assert sorted(plan.experiments) == [
        "adore-star-pq/seed-1", "adore-star-pq/seed-2", "adore-star/seed-1", "adore-star/seed-2",
        "adore-zeroshot/seed-1", "bm25", "randneg/seed-5", "star-pq/seed-1", "star-pq/seed-2", "star/seed-1", "star/seed-2",
        "warmup/seed-1", "warmup/seed-2", "zeroshot",
    ]  # fmt: skip
    stages = Counter(node.stage for node in plan.nodes())
    assert stages["train_warmup"] == 2 and stages["train_star"] == 3 and stages["prepare"] == 1
    assert stages["tokenize"] == 1  # the corpus is tokenized once for every encoder
    star, star_pq, warmup = (plan.experiments[f"{n}/seed-1"] for n in ("star", "star-pq", "warmup"))
    assert star["star"] is star_pq["star"] and star["warmup"] is warmup["warmup"]
    assert star["index"].params["kind"] == "flat" and star_pq["index"].params["kind"] == "pq"
    assert star_pq["warmup-index"].params["kind"] == "flat"  # negatives are always mined with exact search
    assert star["star"].params["seed"] == 1 and plan.experiments["star/seed-2"]["star"].params["seed"] == 2
    assert "negatives" not in plan.experiments["randneg/seed-5"]["star"].inputs
    # the trainers read the corpus's tokens that every encoding reads: one tokenize artifact
    tokens = {n.inputs["tokens"].key for n in plan.nodes() if n.stage in ("train_warmup", "train_star", "encode")}
    assert len(tokens) == 1 and sum(n.stage == "tokenize" for n in plan.nodes()) == 1


def test_mining_from_bm25_skips_the_warmup_encoding(tmp_path, scifact_slice):
    plan = plan_for(tmp_path, scifact_slice, mine={"source": "bm25"}, star={"init": "base"})
    roles = plan.experiments["star/seed-1"]
    assert "warmup" not in roles and roles["star"].inputs["negatives"] is roles["negatives-bm25"]


def test_an_override_of_an_unknown_parameter_names_it(tmp_path, scifact_slice):
    experiments = [{"name": "bad", "method": "star", "params": {"star": {"lr": 1}}}]
    with pytest.raises(ConfigError, match=r"params.star.lr is not a star parameter"):
        plan_for(tmp_path, scifact_slice, experiments)


def test_adore_fixes_the_documents_of_its_base_experiment(tmp_path, scifact_slice):
    plan = plan_for(tmp_path, scifact_slice)
    star, adore, adore_pq = (plan.experiments[f"{n}/seed-2"] for n in ("star", "adore-star", "adore-star-pq"))
    assert adore["adore"].inputs["init"] is star["star"] and adore["index"] is star["index"]
    assert adore_pq["index"].params["kind"] == "pq" and adore_pq["index"].inputs == star["index"].inputs
    assert {"shard_0", "shard_1"} <= set(adore_pq["adore"].inputs)  # uncompressed scoring reads the embeddings
    assert adore["retrieve-test"].inputs["model"] is adore["adore"]
    zeroshot = plan.experiments["adore-zeroshot/seed-1"]
    assert "init" not in zeroshot["adore"].inputs and zeroshot["index"] is plan.experiments["zeroshot"]["index"]


def test_adore_needs_a_dense_documents_experiment(tmp_path, scifact_slice):
    experiments = [{"name": "bm25", "method": "bm25"}, {"name": "a", "method": "adore", "documents": "bm25"}]
    with pytest.raises(ConfigError, match="adore needs 'documents'"):
        plan_for(tmp_path, scifact_slice, experiments)


def test_the_adore_paper_layer_sets_the_paper_codes_adore_values(tmp_path, scifact_slice):
    experiments = [{"name": "star", "method": "star"}, {"name": "a", "method": "adore", "documents": "star"}]
    config = {"dataset": {"path": str(scifact_slice)}, "experiments": experiments,
              "adore": {"learning_rate": 1e-3, "top_k": 50}}  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    layered = load_configs([tmp_path / "config.yaml", workflow_root() / "workflow" / "configs" / "adore-paper.yaml"])
    params = Plan(layered, tmp_path / "results").experiments["a/seed-42"]["adore"].params
    assert (params["learning_rate"], params["batch_size"], params["warmup_steps"]) == (5e-6, 32, 2000)
    assert (params["epochs"], params["max_steps"], params["top_k"]) == (6, 0, 50)  # the layer's keys win, only those


def test_export_takes_adores_query_encoder_and_the_documents_encoder(tmp_path, scifact_slice):
    experiments = [
        {"name": "star", "method": "star", "export": True},
        {"name": "a", "method": "adore", "documents": "star", "export": True,
         "params": {"export": {"push_to_hub": "someone/a"}}},
    ]
    plan = plan_for(tmp_path, scifact_slice, experiments)
    star, adore = plan.experiments["star/seed-2"], plan.experiments["a/seed-2"]
    exports = {node.params["name"]: node for node in plan.exports}  # the last seed (2) of each
    assert len(plan.exports) == 4
    assert exports["star"].inputs["documents"] is star["star"] and "queries" not in exports["star"].inputs
    assert exports["a"].inputs["queries"] is adore["adore"] and exports["a"].inputs["documents"] is star["star"]
    # the card's metrics: the same instance's scores, with its seed
    assert exports["a"].inputs["score_test"] is adore["score-test"] and exports["a"].params["seed"] == 2
    assert (exports["a"].params["push_to_hub"], exports["star"].params["push_to_hub"]) == ("someone/a", "")
    assert exports["star"].params["dataset"] == scifact_slice.name and not exports["star"].params["onnx"]
    assert {str(node.path(plan.results)) for node in plan.exports} <= set(plan.targets())


ANCE = [
    {"name": "star", "method": "star"},
    {"name": "ance", "method": "ance", "seeds": [1]},
    {"name": "adore-ance", "method": "adore", "documents": "ance", "seeds": [1]},
]


def test_ance_unrolls_its_rounds_each_refresh_mined_by_the_last_model(tmp_path, scifact_slice):
    plan = plan_for(tmp_path, scifact_slice, ANCE, ance={"rounds": 2, "steps_per_round": 7})
    star, ance = plan.experiments["star/seed-1"], plan.experiments["ance/seed-1"]
    rounds = [ance[f"ance-{k}"] for k in range(3)]
    assert "ance-3" not in ance and all(r.stage == "train_star" for r in rounds)
    assert {(r.params["negatives"], r.params["max_steps"]) for r in rounds} == {("static", 7)}
    # round 0: the warm-up model on its negatives, the ones STAR trains on
    assert rounds[0].inputs["init"] is star["warmup"] and rounds[0].inputs["negatives"] is star["star"].inputs["negatives"]
    for k in (1, 2):
        negatives = ance[f"ance-{k}-negatives"]
        assert rounds[k].inputs["init"] is rounds[k - 1] and rounds[k].inputs["negatives"] is negatives
        retrieve = negatives.inputs["run"]
        assert retrieve.inputs["model"] is rounds[k - 1] and retrieve.params["split"] == "train"
        assert retrieve.inputs["index"] is ance[f"ance-{k}-index"] and ance[f"ance-{k}-index"].params["kind"] == "flat"
        assert ance[f"ance-{k}-encode-0"].inputs["model"] is rounds[k - 1]
    # the scored retriever and ADORE's documents: the last round's model
    assert ance["retrieve-test"].inputs["model"] is rounds[-1]
    assert plan.experiments["adore-ance/seed-1"]["adore"].inputs["init"] is rounds[-1]


def test_another_ance_round_reuses_the_earlier_rounds(tmp_path, scifact_slice):
    (tmp_path / "two").mkdir(), (tmp_path / "three").mkdir()
    two = plan_for(tmp_path / "two", scifact_slice, ANCE[1:2], ance={"rounds": 2}).experiments["ance/seed-1"]
    three = plan_for(tmp_path / "three", scifact_slice, ANCE[1:2], ance={"rounds": 3}).experiments["ance/seed-1"]
    earlier = [role for role in two if role.startswith(("ance-0", "ance-1", "warmup"))]
    assert len(earlier) > 5 and "ance-1-negatives" in earlier
    assert {role: two[role].key for role in earlier} == {role: three[role].key for role in earlier}
    assert two["ance-2"].key == three["ance-2"].key and "ance-3" in three and "ance-3" not in two
    assert two["score-test"].key != three["score-test"].key
