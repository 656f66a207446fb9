# The README's two commands are `make demo` and `make test`; both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The UI and the demo share one Dagster instance: $DAGSTER_HOME when set, else a project-local one.
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
PYTEST_ARGS ?=

.PHONY: setup demo test ui validate bench clean home gpu-check gpu-bench gpu-wheels

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

# dagster dev under a supervisor (llm_assets/ui.py): SIGINT or SIGTERM to make, or to the supervisor's PID, stops the
# webserver, daemon, code server, run workers and training children within 15 s. exec: the signal reaches it.
UI_PORT ?= 3000
ui: setup home
	exec $(PY) -m llm_assets.ui -h 127.0.0.1 -p $(UI_PORT) -w workspace.yaml

validate: setup home
	$(VENV)/bin/dagster definitions validate -w workspace.yaml

bench: setup
	$(PY) -m benchmarks.run

# The GPU targets run where there is no .venv too (the device machine's python3 with the carried wheels; see
# scripts/gpu_bootstrap.sh), so they use the venv when it exists and need no setup.
GPU_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
GPU_CHECK_ARGS ?=

# Every stage of gpu-1b on the GPU: ran on CUDA, peak memory within 30% of the estimate, tokens/s ($OUT/gpu_check.json).
gpu-check:
	$(GPU_PY) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

# SFT throughput on the GPU: ours against TRL's defaults and TRL's tuned fast path, with MFU and padding waste.
gpu-bench:
	$(GPU_PY) -m benchmarks.run --device cuda

# What the GPU device lacks, as wheels in .gpu_wheels/ (checked under 60 MiB).
gpu-wheels: setup
	PY=$(PY) scripts/gpu_wheels.sh

clean:
	rm -rf .dagster_home data/store data/cache
