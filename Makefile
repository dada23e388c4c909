# virtcore — the two README commands (`make lab`, `make test`) and a few helpers.
#
# Everything lives in ./.venv (created with `python3 -m venv`); nothing is registered outside
# it (no `--user` kernelspec, no global Jupyter config). The project is installed editable with
# its test and dev extras, and only again when pyproject.toml's content changes: the stamp file
# .venv/.installed-<sha256 of pyproject.toml> records the last install.
#
# Variables: PYTHON (the interpreter that creates the venv, default python3), PYTEST_ARGS,
# LAB_ARGS, BENCH_ARGS (passed through), e.g. `make test PYTEST_ARGS='-m "not browser" -x'`.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PYPROJECT_HASH := $(shell sha256sum pyproject.toml 2>/dev/null | cut -c1-16)
STAMP := $(VENV)/.installed-$(PYPROJECT_HASH)
START_NOTEBOOK := notebooks/00-start-here.ipynb
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

PYTEST_ARGS ?=
LAB_ARGS ?=
BENCH_ARGS ?=

# The venv's tools first (nbgrader runs `alembic` by name); its Jupyter paths before the user's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export JUPYTER_PREFER_ENV_PATH := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help lab test bench soak lint clean install hub hub-down

help:
	@echo "make lab     create/update .venv and open JupyterLab on $(START_NOTEBOOK)"
	@echo "make test    create/update .venv and run the whole test suite (PYTEST_ARGS=...)"
	@echo "make bench   run the benchmarks (BENCH_ARGS=...)"
	@echo "make soak    soak the Xen isolation properties (10,000 random sequences)"
	@echo "make lint    ruff check + mypy (virtcore, autograder)"
	@echo "make clean   remove .venv and test artefacts"
	@echo "make hub     (root) bring a course hub up on this machine, loopback only (HUB_ARGS=...)"
	@echo "make hub-down  take it down: servers stopped, accounts and directories removed"

$(VPY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
	  || { echo "virtcore needs Python >= 3.10 (PYTHON=$(PYTHON) is older)" >&2; exit 1; }
	@echo ">>> creating $(VENV) with $$($(PYTHON) --version)"
	@$(PYTHON) -m venv $(VENV) \
	  || { echo "python3 -m venv failed; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2; \
	       rm -rf $(VENV); exit 1; }

$(STAMP): | $(VPY)
	@test -n "$(PYPROJECT_HASH)" || { echo "pyproject.toml not found (run make in the repository root)" >&2; exit 1; }
	@echo ">>> installing virtcore (editable, extras test+dev) into $(VENV) — pyproject.toml changed or first run"
	$(VPY) -m pip install --quiet --progress-bar off --upgrade pip
	$(VPY) -m pip install --quiet --progress-bar off -e '.[test,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

lab: $(STAMP)
	$(VPY) -m jupyterlab --ServerApp.root_dir="$(CURDIR)" \
	  --LabApp.default_url=/lab/tree/$(START_NOTEBOOK) $(ALLOW_ROOT) $(LAB_ARGS)

test: $(STAMP)
	$(VPY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(VPY) -m benchmarks $(BENCH_ARGS)

soak: $(STAMP)
	$(VPY) -m benchmarks.soak_xen

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# A course hub (JupyterHub, nbgrader exchange, PostgreSQL gradebook, TLS Dask cluster) on this
# machine, loopback only, for a try; stops by itself after 60 min (HUB_ARGS='--minutes 0': never).
# See deploy/README.md.
HUB_ARGS ?=
hub: $(STAMP)
	$(VPY) -m deploy.hub up $(HUB_ARGS)

hub-down:
	$(VPY) -m deploy.hub down

clean:
	rm -rf $(VENV) test-artefacts .pytest_cache .ruff_cache .mypy_cache .hypothesis build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -maxdepth 2 -name '*.egg-info' -type d -prune -exec rm -rf {} +
