# Renkei developer entry points. Needs Python 3.11+ (PYTHON=python3.12 to choose another), and Java 17+
# with Maven for the embedded Apache Kafka (`renkei broker fetch` resolves its jars once from
# infra/platform/kafka/pom.xml); without Java the memory-only Tansu broker is used, with a warning.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# Mutation testing has its own venv: its extra pins pytest 8 (see pyproject.toml).
MVENV  ?= .venv-mutation
MBIN    = $(MVENV)/bin
MSTAMP  = $(MVENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
MODULE ?=
comma  := ,

.PHONY: demo test test-fast lint bench chaos mutation up down clean broker

# $(call venv,<folder>,<extras>): a venv with Renkei installed editable with those extras; the stamp is the target.
define venv
	@$(PYTHON) -c 'import sys; sys.exit("Renkei needs Python 3.11 or newer (set PYTHON=...)" if sys.version_info < (3, 11) else 0)'
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet -e '.[$(2)]'
	@rm -f $(1)/.installed-*
	@touch $@
endef

$(STAMP): pyproject.toml
	$(call venv,$(VENV),test$(comma)otel)

$(MSTAMP): pyproject.toml
	$(call venv,$(MVENV),test$(comma)mutation)

broker: $(STAMP)  ## fetch Apache Kafka's jars with Maven once (nothing to do when cached, or without Java)
	$(BIN)/renkei broker fetch

demo: broker  ## the end-to-end scenario, then the portal stays up to log in (Ctrl-C stops)
	$(BIN)/renkei demo --serve

test: broker  ## unit + integration tests on the real embedded broker and PostgreSQL
	$(BIN)/python -m pytest -q

test-fast: broker  ## skip tests marked slow
	$(BIN)/python -m pytest -q -m 'not slow'

lint: $(STAMP)  ## the layering contract (import-linter, pyproject.toml; docs/architecture.md) and ruff
	$(BIN)/lint-imports
	$(BIN)/ruff check .

bench: broker  ## throughput and latency against the broker's own limit (docs/performance.md)
	$(BIN)/renkei bench

chaos: broker  ## crash safety, hostile input and leak scan (docs/performance.md)
	$(BIN)/renkei chaos

mutation: $(MSTAMP)  ## mutation score of the security core on the unit tests (docs/testing.md); MODULE=infra/crypto/tokens.py for one, RERUN=1 for the undetected only
	$(MBIN)/python tests/mutation_scope.py $(if $(RERUN),rerun,run) $(MODULE)

up: broker
	$(BIN)/renkei up --detach

down: $(STAMP)
	$(BIN)/renkei down

clean:
	rm -rf $(VENV) $(MVENV) mutants .renkei .pytest_cache .hypothesis
