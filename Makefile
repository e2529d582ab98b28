# One entry point for people and CI. Everything installs into .venv from pyproject.toml,
# constrained by requirements.lock (every transitive package pinned); setup.py adds the one
# C extension (engine/windows/_series.c), compiled in place by the editable install.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock setup.py engine/windows/_series.c | sha1sum | cut -c1-12)
DATA   ?= ../shared/data/handbook/transactions.parquet

.PHONY: install serve console test test-fast lint imports format proto model bench bench-desk demo clean check-redis check-chromium check-java lock

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock setup.py engine/windows/_series.c
	@command -v cc >/dev/null 2>&1 || { echo "error: the install compiles a C extension (engine/windows/_series.c):" \
	  "install a C compiler and the Python headers, e.g. apt-get install gcc python3-dev" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

## The server on the shipped rules and model; embedded window store unless REDIS_URL is set.
## Its decision log goes to DECISION_LOG (decisions/), where `make console` makes cases from it.
DECISION_LOG ?= decisions
serve: install
	$(BIN)/risk-engine serve --decision-log $(DECISION_LOG)

## The review desk beside `make serve`: http://127.0.0.1:$(DESK_PORT), cases from its decision log, labels
## and blocks back to it. SQLite in desk.db unless DESK_DB is a postgresql:// URL; the first run creates the
## account `lead` and prints its password once.
DESK_DB      ?= sqlite:///desk.db
DESK_PORT    ?= 8080
ENGINE       ?= 127.0.0.1:50051
ENGINE_ADMIN ?= 127.0.0.1:50052
console: install
	$(BIN)/risk-engine console --db $(DESK_DB) --port $(DESK_PORT) --decision-log $(DECISION_LOG) \
	  --engine $(ENGINE) --engine-admin $(ENGINE_ADMIN) --bootstrap-user lead

## The whole test suite, against a Redis the tests start from redis-server (or REDIS_URL), PostgreSQL on
## 127.0.0.1:5432 (databases of their own; DESK_TEST_PG names another server), /usr/bin/chromium, and
## Spark (a local session and a standalone cluster the tests start from the PySpark install; needs Java).
test: install check-redis check-chromium check-java
	$(BIN)/pytest -q

check-chromium:
	@test -x /usr/bin/chromium || { echo "error: the browser tests drive /usr/bin/chromium:" \
	  "install it, e.g. apt-get install chromium" >&2; exit 1; }

check-java:
	@command -v java >/dev/null 2>&1 || { echo "error: the Spark tests need Java 17 or later:" \
	  "install it, e.g. apt-get install default-jre-headless" >&2; exit 1; }

## The fast unit tests alone (no Redis, cluster, server, browser or slow test): well under a minute.
test-fast: install
	$(BIN)/pytest -q tests/unit -m "not redis and not cluster and not server and not slow and not browser and not spark"

## The import layers of engine/ (pyproject.toml [tool.importlinter]): no cycle, nothing imports upward.
imports: install
	$(BIN)/lint-imports

check-redis:
	@for tool in redis-server redis-cli openssl; do \
	  if ! command -v $$tool >/dev/null 2>&1; then \
	    echo "error: the tests need $$tool (a real Redis and a local Redis Cluster; TLS certificates):" \
	      "install it, e.g. apt-get install redis-server openssl" >&2; \
	    exit 1; \
	  fi; \
	done

lint: install imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy engine

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Regenerate engine/service/pb from proto/ (tests fail while the committed stubs are stale).
proto: install
	$(BIN)/python scripts/gen_proto.py

## Retrain and promote the shipped model from the handbook data (about 3 minutes: replay, 4 validation models, the final one).
model: install
	$(BIN)/risk-engine train --data $(DATA) --rules rules/ --config models/handbook.train.yaml --out models/ --promote

## Throughput and latency of Score under load (closed and open loop) against a trivial gRPC server, on a
## Redis and an in-process store it starts itself (~6 minutes); writes benchmarks/results/ and benchmarks/README.md.
bench: install check-redis
	$(BIN)/python benchmarks/loadgen.py

## The review desk at scale (~10 minutes, PostgreSQL on 127.0.0.1:5432): Score with and without a console
## tailing the decision log, then queue and case pages over a million cases; writes benchmarks/results/desk_*.json.
bench-desk: install check-redis
	$(BIN)/python benchmarks/desk_score_latency.py
	$(BIN)/python benchmarks/desk_pages.py

## A newcomer's tour: start the server and stream simulated traffic through it, with decisions,
## reasons and live latency in the terminal (DURATION seconds, RATE per second; Ctrl-C stops).
DURATION ?= 30
RATE     ?= 25
demo: install
	$(BIN)/python benchmarks/demo.py --duration $(DURATION) --rate $(RATE)

## Re-pin every installed package (direct ones are pinned in pyproject.toml) into requirements.lock.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet -e '.[dev]'
	{ echo "# Every package that \`make install\` puts in .venv, at the version CI tested (pip constraints)."; \
	  echo "# Regenerate after changing pyproject.toml: make lock"; \
	  .venv-lock/bin/pip freeze --exclude-editable | grep -v '^-e'; } > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
