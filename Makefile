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

DEMO_ITEMS ?= 200
SEEDS      ?= 0
DEMO_OUT   ?= demo-output
DEV_OUT    ?= dev-output
DEV_SEEDS  ?= 0,1,2
# Debian packages of the real-media corpus (clip art images, speech synthesis) and of the search
# page's browser test (chromium and its driver, through selenium); the tests that need them are
# skipped without them, or fail with SCALE_REQUIRE_MEDIA_PACKAGES=1 (CI)
MEDIA_PACKAGES := openclipart-png espeak-ng chromium chromium-driver

.PHONY: setup demo dev test test-fast bench media-packages clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,dev]'
	@touch $(STAMP)

# the quick demo (about 5 min on 2 CPUs): every stage real, one seed, SCALE only
demo: setup
	SEEDS=$(SEEDS) bash pipelines/demo.sh $(DEMO_OUT) $(DEMO_ITEMS)

# the full reproduction of docs/results.md: the real-media development corpus (1,200 products),
# 3 seeds, SCALE, the uniform-weight ablation and the paper's SCALE, test split
dev: setup media-packages
	CORPUS=clipart SEEDS=$(DEV_SEEDS) UNIFORM=1 PAPER=1 bash pipelines/demo.sh $(DEV_OUT) 1200

test: setup
	$(PY) -m pytest -q --durations=15 tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

bench: setup
	$(PY) pipelines/bench.py --quick --out $(DEMO_OUT)/bench.json

# installs MEDIA_PACKAGES with apt-get when missing (as root); otherwise says what to run
media-packages:
	@missing=""; for p in $(MEDIA_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "media packages installed: $(MEDIA_PACKAGES)"; \
	elif ! command -v apt-get >/dev/null; then echo "error: missing$$missing (Debian packages) and no apt-get here: install their equivalents"; exit 1; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends$$missing; \
	else echo "error: missing Debian packages:$$missing; install them with: sudo apt-get install -y$$missing"; exit 1; fi

clean:
	rm -rf $(DEMO_OUT) $(DEV_OUT) .pytest_cache
