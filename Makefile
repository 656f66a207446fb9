# The README's two commands are `make demo` and `make test`; both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The UI and the demo share one Dagster instance: $DAGSTER_HOME when set, else a project-local one.
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
PYTEST_ARGS ?=

.PHONY: setup demo test ui validate bench clean home

setup: $(VENV)/.installed

$(VENV)/.installed: requirements/lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

home:
	@mkdir -p "$(DAGSTER_HOME)"
	@test -f "$(DAGSTER_HOME)/dagster.yaml" || cp configs/dagster.yaml "$(DAGSTER_HOME)/dagster.yaml"

demo: setup home
	$(PY) -m llm_assets.demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

ui: setup home
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

validate: setup home
	$(VENV)/bin/dagster definitions validate -w workspace.yaml

bench: setup
	$(PY) -m benchmarks.run

clean:
	rm -rf .dagster_home data/store data/cache
