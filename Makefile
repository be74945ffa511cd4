# Two commands on a fresh machine:  make run   (set up + run the default experiment)   make test   (set up + tests)
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; on a GPU machine set TORCH_SPEC to the build you want (e.g. TORCH_SPEC=torch).
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# Rules call `python -m stages.<stage>`: that must be the venv's python.
export PATH := $(abspath $(BIN)):$(PATH)
CORES ?= all

.PHONY: setup run test lint dry-run verify gc clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,datasets]"
	touch $@

run: setup
	$(BIN)/snakemake --cores $(CORES) --workflow-profile workflow/profiles/default

dry-run: setup
	$(BIN)/snakemake -n --workflow-profile workflow/profiles/default

lint: setup
	$(BIN)/snakemake --lint

test: setup lint
	$(BIN)/python -m pytest -q

verify: setup
	$(BIN)/python -m stages.core.store verify

gc: setup
	$(BIN)/python -m stages.pipeline.prune

clean:
	rm -rf $(VENV) .snakemake
