# The two set-up commands: `make demo` and `make test`. Each creates .venv/ when
# missing, installs the local CPU build of torch first (pinned), then the project
# with its test extras, and the Debian packages the tests need. A second run
# reinstalls nothing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
DEMO_ARGS ?=

.PHONY: demo test lint typecheck pytest setup clean-venv

setup: $(VENV)/.deps-stamp $(VENV)/.system-stamp

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel

$(VENV)/.torch-stamp: | $(PY)
	$(PY) -m pip install -q $(TORCH_PIN)
	touch $@

$(VENV)/.deps-stamp: pyproject.toml $(VENV)/.torch-stamp
	$(PY) -m pip install -q -e '.[test]' $(TORCH_PIN)
	touch $@

$(VENV)/.system-stamp: tools/system-packages.txt tools/install-system-packages.sh | $(PY)
	tools/install-system-packages.sh
	touch $@

demo: setup
	$(VENV)/bin/deeproom demo $(DEMO_ARGS)

lint: setup
	$(VENV)/bin/ruff check workspace net models scenes tests

typecheck: setup
	$(VENV)/bin/mypy workspace net models scenes

pytest: setup
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

clean-venv:
	rm -rf $(VENV)
