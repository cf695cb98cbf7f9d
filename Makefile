# streamscore: `make demo` and `make test` work on a fresh clone with Python 3.11.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
PYTEST_ARGS ?=
# Test processes (pytest-xdist): the integration tests mostly wait on brokers and workers,
# so three share two cores well (each process starts its own embedded broker).
PYTEST_WORKERS ?= 3

.PHONY: install tools lint test soak demo bench k8s-render clean

# The virtualenv, rebuilt when the dependencies change. torch is installed first and
# pinned: `torch==2.13.0` is the CPU build, an unpinned torch pulls GBs of CUDA wheels.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Real third-party tools the tests use: kcat (a Kafka client), and from Debian's prometheus
# package promtool (metrics format, rules and config checks) and the Prometheus server (a
# test scrapes a worker with it).
tools:
	@command -v kcat >/dev/null && command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    kcat prometheus >/dev/null; }

# deploy/k8s/rendered/*.yaml: the overlays as kustomize renders them (kubectl's built-in
# kustomize); the tests validate these files and, where kubectl exists, check they are current.
k8s-render:
	for overlay in cpu gpu; do \
	  { echo "# Rendered from deploy/k8s/overlays/$$overlay by \`kubectl kustomize\` (do not edit: \`make k8s-render\`)."; \
	    kubectl kustomize deploy/k8s/overlays/$$overlay; } > deploy/k8s/rendered/$$overlay.yaml; \
	done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) tools lint
	$(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# The hostile-input property test with many more examples than `make test` gives it
# (SOAK_EXAMPLES, default 1000: five minutes on the 2-core development machine).
SOAK_EXAMPLES ?= 1000
soak: $(STAMP) tools
	SOAK_EXAMPLES=$(SOAK_EXAMPLES) $(BIN)/pytest -o addopts="-q" --timeout 0 \
	  tests/integration/test_hostile_input.py

demo: $(STAMP)
	$(BIN)/streamscore demo

# `make bench`: streamscore against its peers on one embedded broker (docs/benchmarks.md).
# BENCH_ARGS overrides the run, e.g. BENCH_ARGS='--events 50000 --configs a,b'. Quix Streams
# gets its own virtualenv inside .venv: its pins conflict with streamscore's.
BENCH_ARGS ?=
QUIX_VENV := $(VENV)/quix-peer
$(VENV)/.bench-installed: $(STAMP) constraints-quix.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	test -x $(QUIX_VENV)/bin/python || $(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/python -m pip install --quiet -c constraints-quix.txt quixstreams
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/streamscore bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache data
