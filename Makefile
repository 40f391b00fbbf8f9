# Two commands for a newcomer: `make run` and `make test`. Both create the virtual environment
# when it is missing. The venv is ~6 GB (CUDA build of torch), so it lives in a cache keyed by a
# hash of the dependency pins in pyproject.toml and `.venv` links to it: repeated clones reuse it.
SHELL := /bin/bash
# Python >= 3.11, as pyproject.toml's requires-python says (the pins need it; tomllib reads them)
PYTHON ?= python3
PINS_HASH := $(shell $(PYTHON) -c "import tomllib,hashlib; p=tomllib.load(open('pyproject.toml','rb'))['project']; print(hashlib.sha256('\n'.join(p['dependencies']+p['optional-dependencies']['dev']).encode()).hexdigest()[:12])")
ifeq ($(PINS_HASH),)
$(error ifcn needs Python >= 3.11 and '$(PYTHON)' could not read pyproject.toml with it: run make PYTHON=python3.11 (or newer))
endif
# the build backend of pyproject.toml, quoted for the shell ('setuptools>=77')
BUILD_REQUIRES := $(shell $(PYTHON) -c "import tomllib; print(*map(repr, tomllib.load(open('pyproject.toml','rb'))['build-system']['requires']))")
VENV_CACHE ?= $(HOME)/.cache/ifcn
VENV_DIR := $(VENV_CACHE)/venv-$(PINS_HASH)
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
# benchmarks/scale.py makes COCO-sized files (~6 GB of memory at --scale 1): `make bench
# SCALE_ARGS="--scale 0.1"` for a quick run
SCALE_ARGS ?=
# Commands run against this checkout even if the shared venv was last pointed at another clone.
export PYTHONPATH := $(CURDIR)

.PHONY: venv run test lint bench clean-results slurm-up slurm-down

$(VENV_DIR)/.complete:
	@echo "creating $(VENV_DIR) (first time: a few minutes)"
	rm -rf $(VENV_DIR)
	$(PYTHON) -m venv $(VENV_DIR)
	$(VENV_DIR)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# The build backend in the venv itself, so that re-pointing the venv below builds offline (a
# venv of Python 3.11 starts with setuptools 65, too old for pyproject.toml's license field).
$(VENV_DIR)/.build-requires: $(VENV_DIR)/.complete
	$(VENV_DIR)/bin/pip install --quiet --disable-pip-version-check $(BUILD_REQUIRES)
	touch $@

# The cached venv may hold an editable install of another clone: point it at this one (checked
# without the PYTHONPATH this Makefile exports, which would always find this checkout).
venv: $(VENV_DIR)/.build-requires
	@ln -sfn $(VENV_DIR) $(VENV)
	@env -u PYTHONPATH $(BIN)/python -P -c "import ifcn, pathlib, sys; sys.exit(pathlib.Path(ifcn.__file__).resolve().parents[1] != pathlib.Path.cwd().resolve())" 2>/dev/null \
		|| $(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .

run: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES) --profile workflow/profiles/default

lint: venv
	$(BIN)/ruff check ifcn tests benchmarks
	$(BIN)/ruff format --check ifcn tests benchmarks
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules

test: venv lint
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q

bench: venv
	mkdir -p results/bench
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/assemble.py --out results/bench/assemble.json
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/proposals_io.py --out results/bench/proposals_io.json
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/evaluate.py --out results/bench/evaluate.json
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/postprocess.py --out results/bench/postprocess.json
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/inference.py --out results/bench/inference.json
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/train.py --out results/bench/train.json
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/scale.py --out results/bench/scale.json $(SCALE_ARGS)

# A one-node SLURM cluster on this machine (tests/slurm_cluster.py; Debian: apt-get install
# slurm-wlm munge), to try the slurm profile by hand: `eval "$$(make -s slurm-up)"` points this
# shell at it, `make slurm-down` stops it and removes its folder. The tests start their own.
SLURM_TEST_DIR ?= /tmp/ifcn-slurm
slurm-up:
	@$(PYTHON) -m tests.slurm_cluster up $(SLURM_TEST_DIR)

slurm-down:
	@$(PYTHON) -m tests.slurm_cluster down $(SLURM_TEST_DIR)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/backbones.py --out results/bench/backbones.json
