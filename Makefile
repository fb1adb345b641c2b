# The two set-up commands: `make demo` and `make test`. Each creates .venv/ when
# missing, installs the local CPU build of torch first (pinned), then the project
# with its test extras, and the Debian packages the tests need. A second run
# reinstalls nothing. The browser client's bundle (net/web/dist/deeproom.js) is built
# here too: `npm ci` from the committed lockfile, then esbuild, again only when its
# sources change; the wheel ships the bundle, so an installed relay needs no node.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
WEB := net/web
WEB_SOURCES := $(WEB)/package.json $(WEB)/package-lock.json $(WEB)/index.html $(wildcard $(WEB)/src/*.js) $(wildcard $(WEB)/test/*.js)
DEMO_ARGS ?=

.PHONY: demo test lint typecheck pytest setup web clean-venv

setup: $(VENV)/.deps-stamp $(VENV)/.system-stamp $(WEB)/dist/deeproom.js

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

# npm comes with NodeSource's nodejs; with Debian's nodejs it is a package of its own.
$(WEB)/node_modules/.ci-stamp: $(WEB)/package.json $(WEB)/package-lock.json | $(VENV)/.system-stamp
	@command -v npm >/dev/null || { echo "installing Debian's npm"; \
		$$( [ "$$(id -u)" -eq 0 ] || echo sudo ) apt-get install -y -qq --no-install-recommends npm >/dev/null; }
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(WEB)/dist/deeproom.js: $(WEB_SOURCES) $(WEB)/node_modules/.ci-stamp
	cd $(WEB) && npm run --silent build

web: $(WEB)/dist/deeproom.js

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
