"""The config schema and the stages' typed params state the same defaults and the same allowed values.

The schema's defaults are the ones every run uses (`cli.build_params` requires every field, and the plan fills them
from the schema), so where a dataclass default differs, the dataclass is wrong; this test keeps them from drifting
apart again, field by field and enum by enum. Params without defaults (prepare's) take every one from the schema;
the enums of registry choices are the registries' keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from stages import encode
from stages.core import dataset_formats
from stages.ml import frozen_documents, lambda_loss, measures, star_loss
from stages.ml import index_kinds, negative_samplers
from stages.bm25 import Bm25Params
from stages.bm25_index import Bm25IndexParams
from stages.encode import EncodeParams
from stages.index import IndexParams
from stages.mine_negatives import MineParams
from stages.pipeline.ance import AnceSettings
from stages.pipeline.methods import METHODS
from stages.ml.models import POOLINGS
from stages.prepare import HubPrepareParams, PrepareParams
from stages.report.stage import TABLE_MEASURES, ReportParams
from stages.retrieve import RetrieveParams
from stages.score import ScoreParams
from stages.train_adore import AdoreParams
from stages.ml.star_training import StarParams
from stages.train_warmup import WarmupParams

SCHEMA = yaml.safe_load((Path(__file__).resolve().parent.parent / "workflow/schemas/config.schema.yaml").read_text())
SECTIONS = SCHEMA["properties"]

# config section -> the params classes whose fields it sets (a field may come from another section: encoder.*)
PAIRS = [
    ("score", ScoreParams),
    ("bm25", Bm25Params),
    ("bm25", Bm25IndexParams),
    ("encoder", StarParams),
    ("encoder", AdoreParams),
    ("encode", EncodeParams),
    ("index", IndexParams),
    ("retrieve", RetrieveParams),
    ("mine", MineParams),
    ("warmup", WarmupParams),
    ("star", StarParams),
    ("adore", AdoreParams),
    ("ance", AnceSettings),
    ("report", ReportParams),
]


# where a dataclass default rightly differs from the config's
EXCEPTIONS = {
    ("encode", "num_shards"): "the config's is how many jobs; a stage call on its own encodes every row (1)",
    ("report", "reference"): "the config's 'auto' is resolved by the plan to a variant, or '' (none) as here",
}


def default_of(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


@pytest.mark.parametrize("section, params", PAIRS, ids=[f"{s}-{p.__name__}" for s, p in PAIRS])
def test_defaults_agree(section, params):
    properties = SECTIONS[section]["properties"]
    shared = [
        f for f in dataclasses.fields(params)
        if f.name in properties and "default" in properties[f.name] and (section, f.name) not in EXCEPTIONS
    ]
    assert shared, f"{params.__name__} shares no field with the schema's {section!r} section"
    differ = {
        f.name: {"schema": properties[f.name]["default"], "dataclass": default_of(f)}
        for f in shared
        if default_of(f) != properties[f.name]["default"]
    }
    assert not differ, f"{section} vs {params.__name__}: {differ}"


@pytest.mark.parametrize("params", [PrepareParams, HubPrepareParams])
def test_prepare_params_take_every_default_from_the_schema(params):
    """No defaults of their own: each field is the schema's ``dataset`` setting with its default, but ``datasets``
    (the plan's: the ids and revisions it located)."""
    fields = dataclasses.fields(params)
    assert [f.name for f in fields if default_of(f) is not dataclasses.MISSING] == []
    properties = SECTIONS["dataset"]["properties"]
    assert [f.name for f in fields if f.name != "datasets" and "default" not in properties.get(f.name, {})] == []


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
    assert SECTIONS["report"]["properties"]["measures"]["default"] == TABLE_MEASURES
