import importlib
import json
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# The package under the name it has here: `stages` beside the Snakefile in a checkout; in an installed wheel the
# workflow is the package's data (<package>/workflow_files, stages.core.workflow_files), the package its parent.
ROOT = Path(workflow.basedir)
CHECKOUT = (ROOT / "stages" / "__init__.py").is_file()
PACKAGE, PACKAGE_PARENT = ("stages", ROOT) if CHECKOUT else (ROOT.parent.name, ROOT.parent.parent)
sys.path.insert(0, str(PACKAGE_PARENT))
hardneg = importlib.import_module(f"{PACKAGE}.pipeline.snakefile")  # everything the workflow needs from the package
if CHECKOUT:
    hardneg.share_with_jobs(ROOT)

try:
    hardneg.validate_config(config)  # validates with readable messages, then fills the schema's defaults
    PLAN = hardneg.Plan(config)
except hardneg.PipelineError as error:
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
    hardneg.write_pointers("results", PLAN.pointers())
    for line in PLAN.recorded_warnings():  # what the stages warned of, not only in their logs
        print(line)
    if Path("results/runs/report/results.csv").is_file():  # the run's table, where a user looks first
        print(hardneg.console_summary(Path("results/runs/report")))
