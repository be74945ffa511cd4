"""The config: read (YAML files, layered as ``snakemake --configfile A B`` layers them), validated against the schema
(`stages.core.settings`: every key, default and allowed value is stated there) with readable messages, and filled
with the schema's defaults, once. Measure names are checked against the measures registry (`stages.ml.measures`).
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

from ..core.errors import ConfigError
from ..core.settings import SCHEMA, schema as config_schema
from ..ml import measures


FLOAT_LITERAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def load_config(path: Path) -> dict:
    """Read a config file and validate it (filling defaults) exactly as the Snakefile does."""
    return load_configs([path])


def load_configs(paths: list[Path]) -> dict:
    """Config files layered as ``snakemake --configfile A B`` layers them (later files win, key by key in nested
    mappings, other values replaced whole), then validated with the schema's defaults filled in."""
    config: dict = {}
    for path in paths:
        config = _layer(config, read_config_file(Path(path)))
    validate_config(config, " + ".join(map(str, paths)))
    return config


def read_config_file(path: Path) -> dict:
    """One YAML config file as a mapping; a missing file, a YAML error or another shape is a ConfigError."""
    import yaml

    if not path.is_file():
        raise ConfigError("config file not found", path=path, fix="check the --configfile path")
    try:
        layer = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise ConfigError(
            f"not valid YAML: {getattr(error, 'problem', None) or error}",
            path=path,
            line=mark.line + 1 if mark else None,
            fix="check the brackets, quotes and indentation around that line",
        ) from None
    if not isinstance(layer, dict):
        raise ConfigError(
            f"a config file must be a mapping of keys at top level, not a {type(layer).__name__}",
            path=path,
            fix="write it as 'section: {key: value}' lines, like config.yaml",
        )
    return layer


def _layer(base: dict, over: dict) -> dict:
    for key, value in over.items():
        if isinstance(value, dict):
            value = _layer(base[key] if isinstance(base.get(key), dict) else {}, value)
        base[key] = value
    return base


def validate_config(config: dict, source: str = "config") -> None:
    """Validate against the JSON schema, naming each wrong key and what is allowed; then fill defaults.

    Where the schema wants a number, a float literal that YAML 1.1 read as text (``1e-5``) becomes a float first, in
    place; NaN and infinity are refused anywhere."""
    import jsonschema

    schema = config_schema()
    coerce_numbers(config, schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path))
    lines = [f"{_dotted(error.path) or '(top level)'}: {_explain(error)}" for error in errors]
    lines += [f"{_dotted(path)}: {value} is not a finite number" for path, value in non_finite(config)]
    lines += unknown_measures(config) if not lines else []
    if lines:
        raise ConfigError(
            f"{source} is invalid:\n  " + "\n  ".join(lines), fix=f"the allowed keys and values are in {SCHEMA}"
        )
    fill_defaults(config, schema)


def coerce_numbers(instance, schema: dict) -> None:
    """Float literals given as strings (YAML 1.1 reads ``1e-5`` so) become floats where the schema wants a number."""
    if isinstance(instance, dict):
        named = schema.get("properties", {})
        other = schema.get("additionalProperties")
        slots = [(key, named.get(key, other)) for key in instance]
    elif isinstance(instance, list):
        slots = [(i, schema.get("items")) for i in range(len(instance))]
    else:
        return
    for slot, sub in slots:
        if not isinstance(sub, dict):
            continue
        value = instance[slot]
        if isinstance(value, str) and _wants_number(sub) and FLOAT_LITERAL.fullmatch(value.strip()):
            instance[slot] = float(value)
        else:
            coerce_numbers(value, sub)


def _wants_number(schema: dict) -> bool:
    kind = schema.get("type")
    return kind == "number" or (isinstance(kind, list) and "number" in kind)


def non_finite(instance, path: tuple = ()) -> list[tuple[tuple, float]]:
    """(path, value) of every NaN or infinite number in the config."""
    if isinstance(instance, float) and not math.isfinite(instance):
        return [(path, instance)]
    if isinstance(instance, dict):
        return [found for key, value in instance.items() for found in non_finite(value, (*path, key))]
    if isinstance(instance, list):
        return [found for i, value in enumerate(instance) for found in non_finite(value, (*path, i))]
    return []


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
    if error.validator == "pattern" and "description" in error.schema:
        return f"{error.instance!r} is not allowed: {error.schema['description']}"
    return error.message


def unknown_measures(config: dict) -> list[str]:
    """``path: problem`` of each measure setting that the measures registry does not know."""
    named = [(("score", "measures", i), m) for i, m in enumerate(config.get("score", {}).get("measures", []))]
    named += [(("report", "measures", i), m) for i, m in enumerate(config.get("report", {}).get("measures", []))]
    named += [((section, "eval_measure"), config[section]["eval_measure"])
              for section in ("warmup", "star", "adore") if "eval_measure" in config.get(section, {})]
    problems = []
    for path, name in named:
        try:
            measures.check(name)
        except ConfigError as error:
            problems.append(f"{_dotted(path)}: {error.message}")
    return problems
