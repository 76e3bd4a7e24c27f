# All set-up and runs go through this file; see README.md.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

DEMO_ITEMS ?= 600
DEMO_OUT   ?= demo-output

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,dev]'
	@touch $(STAMP)

demo: setup
	bash pipelines/demo.sh $(DEMO_OUT) $(DEMO_ITEMS)

test: setup
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

bench: setup
	$(PY) pipelines/bench.py --quick --out $(DEMO_OUT)/bench.json

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
