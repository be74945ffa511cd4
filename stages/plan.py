"""The experiment DAG: which stage runs with which params on which inputs, and the content key of each artifact.

The Snakefile builds one `Plan` from the validated config; every rule is generic over ``{key}`` and asks the plan for
its inputs and params. Experiments that share upstream work get the same nodes (same keys), so it runs once.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping

from stages.errors import ConfigError
from stages.prepare import dataset_files
from stages.store import HashCache, artifact_key, raw_key, stage_version

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
RESULTS = Path("results")


class RawFile:
    """A dataset or model file outside the store; its key is its content hash."""

    def __init__(self, path: Path, cache: HashCache):
        self.path = Path(path)
        self.key = raw_key(self.path, cache)


class Node:
    """One artifact: a stage run with fixed params on fixed inputs."""

    def __init__(self, stage: str, params: Mapping[str, Any], inputs: Mapping[str, "Node | RawFile"]):
        self.stage = stage
        self.params = json.loads(json.dumps(params))  # plain JSON values, detached from the config
        self.inputs = dict(inputs)
        self.key = artifact_key(stage, stage_version(stage), self.params, {n: i.key for n, i in self.inputs.items()})

    def path(self, results: Path = RESULTS) -> Path:
        return Path(results) / self.stage / self.key

    def input_paths(self, results: Path = RESULTS) -> dict[str, str]:
        return {
            name: str(item.path if isinstance(item, RawFile) else item.path(results)) for name, item in self.inputs.items()
        }


def load_config(path: Path) -> dict:
    """Read a config file and validate it (filling defaults) exactly as the Snakefile does."""
    import yaml

    if not Path(path).is_file():
        raise ConfigError("config file not found", path=path)
    with open(path) as handle:
        config = yaml.safe_load(handle) or {}
    validate_config(config, str(path))
    return config


def validate_config(config: dict, source: str = "config") -> None:
    """Validate against the JSON schema, naming each wrong key and what is allowed; then fill defaults."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        lines = [f"{_dotted(error.path) or '(top level)'}: {_explain(error)}" for error in errors]
        raise ConfigError(
            f"{source} is invalid:\n  " + "\n  ".join(lines), fix=f"the allowed keys and values are in {SCHEMA}"
        )
    fill_defaults(config, schema)


def fill_defaults(instance, schema: dict) -> None:
    """Set the schema's defaults for absent keys, recursively (what snakemake's validate(set_default=True) does)."""
    if isinstance(instance, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in instance and "default" in sub:
                instance[name] = copy.deepcopy(sub["default"])
            if name in instance:
                fill_defaults(instance[name], sub)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            fill_defaults(item, schema["items"])


def _dotted(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _explain(error) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return f"unknown key(s) {unknown}; allowed: {allowed}"
    if error.validator == "enum":
        return f"{error.instance!r} is not allowed; choose one of {error.validator_value}"
    if error.validator == "type":
        return f"{error.instance!r} should be of type {error.validator_value}"
    return error.message


class Plan:
    def __init__(self, config: Mapping[str, Any], results: Path = RESULTS):
        self.config = config
        self.results = Path(results)
        self.cache = HashCache(self.results / ".hash-cache.json")
        self._nodes: dict[tuple[str, str], Node] = {}
        self.experiments: dict[str, dict[str, Node]] = {}
        names = [e["name"] for e in config["experiments"]]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"experiment names must be unique; repeated: {duplicates}")
        for index, experiment in enumerate(config["experiments"]):
            self.experiments[experiment["name"]] = self._build(index, experiment)
        self.cache.save()

    # --- lookups used by the Snakefile -------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    def node(self, stage: str, key: str) -> Node:
        try:
            return self._nodes[(stage, key)]
        except KeyError:
            raise ConfigError(f"no experiment in the config makes {stage} artifact {key}") from None

    def targets(self) -> list[str]:
        return sorted(
            str(node.path(self.results))
            for roles in self.experiments.values()
            for role, node in roles.items()
            if node.stage == "score"
        )

    def pointers(self) -> dict[str, dict[str, Path]]:
        return {name: {role: n.path(self.results) for role, n in roles.items()} for name, roles in self.experiments.items()}

    # --- building ----------------------------------------------------------------------------------------------
    def _add(self, stage: str, params: Mapping[str, Any], inputs: Mapping[str, Node | RawFile]) -> Node:
        node = Node(stage, params, inputs)
        return self._nodes.setdefault((stage, node.key), node)

    def _section(self, index: int, experiment: Mapping[str, Any], name: str) -> dict:
        """A stage's config section with the experiment's overrides applied."""
        section = copy.deepcopy(self.config.get(name, {}))
        overrides = experiment.get("params", {})
        unknown_sections = sorted(set(overrides) - {k for k in self.config if k not in {"experiments", "dataset"}})
        if unknown_sections:
            raise ConfigError(
                f"experiments[{index}] ({experiment['name']}): params names unknown sections {unknown_sections}",
                fix=f"override keys of: {sorted(k for k in self.config if k not in {'experiments', 'dataset'})}",
            )
        for key, value in overrides.get(name, {}).items():
            if key not in section:
                raise ConfigError(
                    f"experiments[{index}] ({experiment['name']}): params.{name}.{key} is not a {name} parameter",
                    fix=f"{name} parameters are: {sorted(section)}",
                )
            section[key] = value
        if overrides.get(name):
            merged = copy.deepcopy(dict(self.config))
            merged[name] = section
            validate_config(merged)
        return section

    def _prepare(self) -> Node:
        dataset = self.config["dataset"]
        files = dataset_files(Path(dataset["path"]), dataset["format"], dataset["splits"])
        params = {k: dataset[k] for k in ("format", "splits", "dev_fraction", "dev_source", "seed", "unknown_ids")}
        return self._add("prepare", params, {name: RawFile(path, self.cache) for name, path in files.items()})

    def _build(self, index: int, experiment: Mapping[str, Any]) -> dict[str, Node]:
        roles: dict[str, Node] = {"prepare": self._prepare()}
        splits = self.config["evaluate"]["splits"]
        available = set(self.config["dataset"]["splits"]) | ({"dev"} if self.config["dataset"]["dev_fraction"] else set())
        for split in splits:
            if split not in available:
                raise ConfigError(
                    f"evaluate.splits names {split!r}, which the dataset does not have",
                    fix=f"use some of {sorted(available)} (dev exists when dataset.dev_fraction > 0)",
                )
            run = self._run(index, experiment, split, roles)
            score = {**self._section(index, experiment, "score"), "split": split}
            roles[f"score-{split}"] = self._add("score", score, {"prepared": roles["prepare"], "run": run})
        return roles

    def _run(self, index: int, experiment: Mapping[str, Any], split: str, roles: dict[str, Node]) -> Node:
        method = experiment["method"]
        if method == "bm25":
            params = {**self._section(index, experiment, "bm25"), "split": split}
            roles[f"bm25-{split}"] = self._add("bm25", params, {"prepared": roles["prepare"]})
            return roles[f"bm25-{split}"]
        raise ConfigError(f"experiments[{index}]: unknown method {method!r}")
