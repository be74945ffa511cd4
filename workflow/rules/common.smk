import json
import sys

from snakemake.utils import min_version, validate

min_version("9.0")
sys.path.insert(0, workflow.basedir)

from stages.core.errors import PipelineError
from stages.pipeline.plan import Plan, validate_config
from stages.core.store import write_pointers

try:
    validate_config(config)  # readable messages first; then snakemake's validate fills the defaults
    validate(config, workflow.source_path("../schemas/config.schema.yaml"), set_default=True)
    PLAN = Plan(config)
except PipelineError as error:
    sys.exit(f"error: {error.render()}")

CONTAINER = config["container"]  # each rule's image for --software-deployment-method apptainer

wildcard_constraints:
    key="[0-9a-f]{16}",


def stage_inputs(stage):
    """Input function: the artifact's named inputs. ancient(): a key already pins its inputs' content."""
    return lambda wildcards: {
        name: ancient(path) for name, path in PLAN.node(stage, wildcards.key).input_paths().items()
    }


def stage_params(stage):
    return lambda wildcards: json.dumps(PLAN.node(stage, wildcards.key).params, sort_keys=True)


def stage_input_json(stage):
    return lambda wildcards: json.dumps(PLAN.node(stage, wildcards.key).input_paths(), sort_keys=True)


onsuccess:
    write_pointers("results", PLAN.pointers())
