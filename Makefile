# Two commands a newcomer needs: `make demo` and `make test`. Both install first (uv, from the committed uv.lock).
SHELL := bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
export UV_LINK_MODE ?= copy
# Compiled bytecode in one ignored folder: every CLI, worker and server subprocess the demo and the tests start then
# imports prefect/boto3/mlflow 2-3x faster than with PYTHONDONTWRITEBYTECODE set (measured: 3.1 s -> 1.1 s).
PYENV := env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=$(CURDIR)/.pycache
# the suite's parallel workers: its tests mostly wait on servers and subprocesses, so 3 fit on 2 cores
TEST_WORKERS ?= 3

.PHONY: install demo test lint bench bench-rto bench-fleet clean

install: .venv/.installed

# The training extra (torch, transformers, lightning: the trainer callbacks and their tests) takes the CPU torch
# wheel from /opt/wheels (pyproject.toml). Without that file the rest installs, and the trainer tests FAIL under
# CI=true, saying so; docs/guide/training.md says how to install torch elsewhere.
TORCH_WHEEL := $(wildcard /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl)
TRAINING_EXTRA := $(if $(TORCH_WHEEL),--extra training,)

.venv/.installed: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -c "import uv" 2>/dev/null || python3 -m pip install --quiet uv
	$(UV) sync --frozen $(TRAINING_EXTRA)
	@[ -n "$(TRAINING_EXTRA)" ] || echo "warning: /opt/wheels has no torch 2.13.0 CPU wheel: installed without the training extra (docs/guide/training.md)"
	@touch $@

demo: install
	$(PYENV) ./scripts/demo.sh

# The production shape (#18): two bundles, Prefect and MLflow on PostgreSQL, a worker per region, a drill of one
# bundle while the other protects. `make demo` (SQLite, one bundle) stays the default: it starts faster.
.PHONY: demo-fleet
demo-fleet: install
	$(PYENV) ./scripts/demo_fleet.sh

# The layer contracts (.importlinter) also run inside the suite (tests/test_layering.py); lint first fails fast.
test: lint
	$(PYENV) $(UV) run --frozen pytest -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(UV) run --frozen ruff check llmdr tasks flows tests bench deployments scripts
	$(UV) run --frozen lint-imports --no-cache

bench: install
	$(UV) run --frozen python bench/bench.py

bench-rto: install
	$(UV) run --frozen python bench/rto.py

# issue #18: protect throughput with 1/2/4 workers on 6 bundles (PostgreSQL profile), warm RTO by worker topology
bench-fleet: install
	$(PYENV) $(UV) run --frozen python bench/fleet.py

.PHONY: bench-lock
bench-lock: install
	$(UV) run --frozen python bench/object_lock.py

.PHONY: bench-scale
bench-scale: install
	$(UV) run --frozen python bench/scale.py

# llmdr snapshot / replicate / snapshots / restore with 10 and with 1,000 snapshots in the repository (#15).
.PHONY: bench-history
bench-history: install
	$(UV) run --frozen python bench/history.py

# Validating a ~1 GB folder of Parquet partitions, full and sampled (issue #20): bench/results/datasets-*.
.PHONY: bench-datasets
bench-datasets: install
	$(UV) run --frozen python bench/datasets.py

# Every bench script once at its smallest size (also part of `make test`, as tests/test_bench_smoke.py).
.PHONY: bench-smoke
bench-smoke: install
	$(PYENV) $(UV) run --frozen pytest -q tests/test_bench_smoke.py tests/test_bench_rto_smoke.py tests/test_bench_fleet_smoke.py

# docs/reference/ (CLI, configuration, exit codes) generated from the code; tests/test_docs.py fails when it is stale.
.PHONY: docs
docs: install
	$(PYENV) $(UV) run --frozen python scripts/gen_reference.py

clean:
	rm -rf .demo .demo-fleet bench/work .pytest_cache .hypothesis .pycache
