"""Every setting's default, stated once: in the config schema (``workflow/schemas/config.schema.yaml``).

The stages' params dataclasses have no defaults; the plan fills a stage's params from the validated config, and Python
callers (tests, benchmarks) fill them here from the schema's defaults::

    settings.params(StarParams, "star", "encoder", seed=1, max_steps=3)
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, TypeVar

from .errors import ConfigError
from .workflow_files import workflow_root

P = TypeVar("P")
SCHEMA = workflow_root() / "workflow" / "schemas" / "config.schema.yaml"


@functools.cache
def schema() -> dict:
    """The config schema, read once (shared: do not change it)."""
    import yaml

    return yaml.safe_load(SCHEMA.read_text())


def defaults(section: str) -> dict[str, Any]:
    """The schema's default of each key of a config section that has one (a copy, free to change)."""
    sections = schema()["properties"]
    if section not in sections:
        raise ConfigError(f"the config has no section {section!r}", fix=f"name one of {sorted(sections)}")
    keys = sections[section].get("properties", {})
    return {key: copy.deepcopy(sub["default"]) for key, sub in keys.items() if "default" in sub}


def params(cls: type[P], *sections: str, **values: Any) -> P:
    """A stage's params: each field of ``cls`` from ``values``, else from the first of ``sections`` whose schema has
    a default for it. A field with neither, or a value that is no field, is a ConfigError naming it."""
    names = [field.name for field in dataclasses.fields(cls)]
    pool = {key: value for section in reversed(sections) for key, value in defaults(section).items()} | values
    unknown = sorted(set(values) - set(names))
    missing = [name for name in names if name not in pool]
    if unknown or missing:
        problems = [f"unknown fields {unknown}"] if unknown else []
        if missing:
            problems.append(f"no value and no default in the schema's sections {list(sections)} for {missing}")
        raise ConfigError(
            f"{cls.__name__}: " + "; ".join(problems), fix=f"pass values by keyword; its fields are {names}"
        )
    return cls(**{name: pool[name] for name in names})
