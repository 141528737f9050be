# The two commands a new machine needs are `make demo` and `make test` (see README).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE := .devstack
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv up up-cluster down status browser compose-check demo demo-services test lint bench soak eval eval-quick eval-api clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(BIN)/es-interest: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@# LightGBM's wheel links the system's OpenMP runtime (Debian's libgomp1).
	@$(BIN)/python -c 'import lightgbm' 2>/dev/null || (echo "installing libgomp1 (Debian package)..." \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgomp1 >/dev/null)
	$(BIN)/es-interest --quiet model export --no-check
	touch $@

venv: $(BIN)/es-interest  ## create .venv and install the package with its dev tools

up:  ## start Elasticsearch 9.5.3 :9200, OpenSearch 3.5.0 :9201, Elasticsearch 8.19 :9202, OpenSearch 2.19.1 :9203, Redis :6379 (ENGINES=... to pick)
	devstack/stack.sh up

up-cluster:  ## a three-node Elasticsearch 9.5.3 cluster :9210-9212 (one replica per shard), and Redis
	devstack/stack.sh up-cluster

down:  ## stop the engines, the cluster, Redis, and the demo's worker and API
	devstack/stack.sh down

status:  ## what is running
	devstack/stack.sh status

demo: venv up  ## the whole loop on a local engine: index, feedback, personalized search
	@$(MAKE) --no-print-directory demo-services
	$(BIN)/es-interest demo

demo-services:
	@mkdir -p $(STATE)
	@if ! kill -0 $$(cat $(STATE)/worker.pid 2>/dev/null) 2>/dev/null; then \
	  setsid nohup $(BIN)/es-interest worker --concurrency 2 >$(STATE)/worker.log 2>&1 </dev/null & \
	  echo $$! >$(STATE)/worker.pid; echo "worker started (log: $(STATE)/worker.log)"; fi
	@if ! kill -0 $$(cat $(STATE)/api.pid 2>/dev/null) 2>/dev/null; then \
	  setsid nohup $(BIN)/es-interest serve >$(STATE)/api.log 2>&1 </dev/null & \
	  echo $$! >$(STATE)/api.pid; echo "API started on 127.0.0.1:8000 (log: $(STATE)/api.log)"; fi

browser:  ## Debian's chromium and chromedriver, for the inspector page's browser test
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  echo "installing chromium and chromium-driver (Debian packages)..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver >/dev/null) \
	  || echo "could not install them: tests/integration/test_inspector.py will skip"; fi

compose-check:  ## docker-compose.yml through Docker Compose v2's own parser (built once from the Go module proxy)
	devstack/compose.sh

test: venv up up-cluster browser  ## unit and integration tests against the real services (engines, the cluster, Redis)
	$(BIN)/pytest -ra

lint:  ## ruff and mypy
	$(BIN)/ruff check plugin workers tests bench
	$(BIN)/mypy

eval: venv up  ## the full offline evaluation on MovieLens: docs/evaluation.md and plots
	$(BIN)/es-interest eval

eval-quick: venv up  ## the same on 40 users (a few minutes): bench/results/eval-quick/
	$(BIN)/es-interest eval --quick

eval-api: venv up  ## the product through its HTTP API on held-out likes: docs/api_check.md
	$(BIN)/es-interest eval-api

clean: down  ## stop everything and delete data, build outputs and the venv
	rm -rf $(STATE) $(VENV) devstack/*/target

soak: venv up  ## searches and events together for 2 minutes: 0 lost events, 0 5xx, RSS (bench/results/soak.*)
	$(BIN)/python -m bench.soak

bench: venv up  ## benchmarks: JSON and markdown tables in bench/results/
	$(BIN)/python -m bench.model
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.search
	$(BIN)/python -m bench.request_parts
	$(BIN)/python -m bench.broker
