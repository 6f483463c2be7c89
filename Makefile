# jobgate: `make test` installs everything into .venv (and the system packages the
# tests drive, through apt-get when root) and runs the whole suite; `make run` serves
# config/gateway.yaml with a private redis-server.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/gateway.yaml
STAMP := $(VENV)/.installed

# command:debian-package pairs the tests need on the machine.
APT_NEEDS := redis-server:redis-server redis-cli:redis-tools git:git curl:curl nginx:nginx-light \
  lighttpd:lighttpd docker-registry:docker-registry skopeo:skopeo npm:npm
# The npm registry (verdaccio) the package tests run against.
NODE_PEERS := tests/peers_node/node_modules/.package-lock.json
# Each mk/*.mk fragment may add to APT_NEEDS and INSTALL_TARGETS (extra install steps).
INSTALL_TARGETS := $(NODE_PEERS)
-include $(sort $(wildcard mk/*.mk))

.PHONY: all install system-deps test lint typecheck run check clean

all: test

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "jobgate needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

system-deps:
	@missing=""; \
	for pair in $(APT_NEEDS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "missing system packages; run: sudo apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	fi

install: $(STAMP) system-deps $(INSTALL_TARGETS)

$(NODE_PEERS): tests/peers_node/package.json tests/peers_node/package-lock.json | system-deps
	npm ci --prefix tests/peers_node --no-audit --no-fund --loglevel=error

test: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

check: install
	$(BIN)/jobgate check --config $(CONFIG)

run: install
	$(BIN)/jobgate serve --config $(CONFIG)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
