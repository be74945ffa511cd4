"""The config schema is the one source of every setting's default and of the allowed values the registries hold.

The stages' params dataclasses have no defaults (`cli.build_params` requires every field; the plan fills them from
the validated config, Python callers from `stages.core.settings`); the schema's enums are the registries' keys."""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest
import yaml

from stages import encode
from stages.core import dataset_formats, settings
from stages.core.errors import ConfigError
from stages.ml import frozen_documents, lambda_loss, measures, star_loss
from stages.ml import index_kinds, negative_samplers
from stages.ml.encoder_spec import EncoderSpec
from stages.ml.training import TrainConfig
from stages.ml.watch import DevEvaluation
from stages.core.declarations import STAGES
from stages.pipeline.ance import AnceSettings
from stages.pipeline.run_plan import stage_entry
from stages.pipeline.methods import METHODS
from stages.ml.models import POOLINGS
from stages.pipeline.dag import Plan
from stages.pipeline.config import load_config
from stages.train_adore import AdoreParams
from stages.ml.star_training import StarParams

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
SECTIONS = SCHEMA["properties"]


def called(call: ast.Call) -> str:
    """The name a call calls: ``f`` of ``f(...)`` and of ``m.f(...)``."""
    return getattr(call.func, "attr", getattr(call.func, "id", ""))


def stage_params_classes() -> set[type]:
    """Each stage module's params: the class it passes to `run_stage` and every ``*Params`` dataclass it defines,
    with their dataclass bases; and the plan's `AnceSettings`."""
    found: set[type] = {AnceSettings}
    for stage in STAGES:
        module = importlib.import_module(stage_entry(stage).main.__module__)
        tree = ast.parse(Path(module.__file__).read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and called(n) == "run_stage"]
        names = {call.args[1].id for call in calls if isinstance(call.args[1], ast.Name)}
        names |= {name for name, value in vars(module).items() if name.endswith("Params") and isinstance(value, type)}
        found |= {getattr(module, name) for name in names}
    return {base for cls in found for base in cls.__mro__ if dataclasses.is_dataclass(base)}


def test_no_stage_params_field_has_a_default():
    classes = stage_params_classes()
    assert {StarParams, AdoreParams, AnceSettings, TrainConfig, DevEvaluation, EncoderSpec} <= classes  # found at all
    assert {cls.__name__ for cls in classes} >= {"PrepareParams", "HubPrepareParams", "ReportParams", "ExportParams"}
    defaulted = {
        f"{cls.__name__}.{field.name}"
        for cls in classes
        for field in dataclasses.fields(cls)
        if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
    }
    assert not defaulted, f"the schema states every default; these restate one: {sorted(defaulted)}"


def test_settings_fill_a_stages_params_from_the_schema():
    star = dataclasses.asdict(settings.params(StarParams, "star", "encoder", seed=1, max_steps=3))
    expected = {**settings.defaults("encoder"), **settings.defaults("star"), "seed": 1, "max_steps": 3}
    assert star == {name: expected[name] for name in star}
    adore = settings.params(AdoreParams, "adore", "encoder", seed=1)
    assert (star["epochs"], adore.epochs, adore.learning_rate) == (3, 6, star["learning_rate"])  # adore's own epochs
    with pytest.raises(ConfigError, match=r"unknown fields \['lr'\]; no value .* for \['seed'\]"):
        settings.params(StarParams, "star", "encoder", lr=1e-5)


def test_the_plan_and_settings_give_the_same_params(tmp_path, scifact_slice):
    experiments = [{"name": "star", "method": "star"}, {"name": "adore", "method": "adore", "documents": "star"}]
    config = {"dataset": {"path": str(scifact_slice)}, "experiments": experiments}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    roles = Plan(load_config(tmp_path / "config.yaml"), tmp_path / "results").experiments["adore/seed-42"]
    for role, cls in (("star", StarParams), ("adore", AdoreParams)):
        assert roles[role].params == dataclasses.asdict(settings.params(cls, role, "encoder", seed=42)), role


ENUMS = [
    ("encoder", "pooling", ["auto", *POOLINGS]),
    ("encode", "dtype", list(encode.DTYPES)),
    ("index", "kind", list(index_kinds.KINDS)),
    ("retrieve", "backend", list(index_kinds.BACKENDS)),
    ("star", "negatives", list(negative_samplers.SAMPLERS)),
    ("warmup", "negatives", list(negative_samplers.SAMPLERS)),
    ("star", "loss", list(star_loss.LOSSES)),
    ("warmup", "loss", list(star_loss.LOSSES)),
    ("adore", "metric", list(lambda_loss.METRICS)),
    ("adore", "pq_scoring", list(frozen_documents.PQ_SCORING)),
    ("dataset", "format", list(dataset_formats.FORMATS)),
    ("dataset", "layout", list(dataset_formats.HF_LAYOUTS)),
]


@pytest.mark.parametrize("section, name, values", ENUMS, ids=[f"{s}.{n}" for s, n, _ in ENUMS])
def test_enums_agree(section, name, values):
    assert sorted(map(str, SECTIONS[section]["properties"][name]["enum"])) == sorted(map(str, values))


def test_methods_agree():
    """The schema's experiment methods are the plan's registry (`stages.pipeline.methods.METHODS`)."""
    assert sorted(SECTIONS["experiments"]["items"]["properties"]["method"]["enum"]) == sorted(METHODS)


def test_measures_agree():
    assert set(SECTIONS["score"]["properties"]["measures"]["default"]) <= set(measures.NAMED)
    assert set(SECTIONS["report"]["properties"]["measures"]["default"]) <= set(measures.NAMED)
    assert SECTIONS["star"]["properties"]["eval_measure"]["default"] in measures.NAMED


def enums(node) -> list[list]:
    """Every enum anywhere in a schema."""
    if isinstance(node, dict):
        return ([node["enum"]] if "enum" in node else []) + [e for value in node.values() for e in enums(value)]
    return [e for value in node for e in enums(value)] if isinstance(node, list) else []


def test_a_measure_is_named_by_one_schema_entry():
    """Every measure setting is `$defs/measure` (the measures registry checks the names), never a list of names."""
    measure = {"$ref": "#/$defs/measure"}
    assert SECTIONS["score"]["properties"]["measures"]["items"] == measure
    assert SECTIONS["report"]["properties"]["measures"]["items"] == measure
    for trainer in ("warmup", "star", "adore"):
        assert SECTIONS[trainer]["properties"]["eval_measure"]["$ref"] == measure["$ref"]
    assert not [values for values in enums(SCHEMA) if "nDCG@10" in values]
