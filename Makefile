# Two commands a newcomer needs: `make demo` and `make test`. Both install first (uv, from the committed uv.lock).
SHELL := bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
export UV_LINK_MODE ?= copy

.PHONY: install demo test lint bench bench-rto ui clean

install: .venv/.installed

.venv/.installed: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -c "import uv" 2>/dev/null || python3 -m pip install --quiet uv
	$(UV) sync --frozen
	@touch $@

demo: install
	./scripts/demo.sh

test: install
	$(UV) run --frozen pytest

lint: install
	$(UV) run --frozen ruff check llmdr tasks flows tests bench

bench: install
	$(UV) run --frozen python bench/bench.py

bench-rto: install
	$(UV) run --frozen python bench/rto.py

.PHONY: bench-lock
bench-lock: install
	$(UV) run --frozen python bench/object_lock.py

clean:
	rm -rf .demo bench/work .pytest_cache .hypothesis
