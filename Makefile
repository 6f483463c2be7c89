# jobgate: `make test` installs everything into .venv (and the system packages the
# tests drive, through apt-get when root) and runs the whole suite; `make run` serves
# config/gateway.yaml with a private redis-server.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/gateway.yaml
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

# command:debian-package pairs `make run` needs (a private redis-server when none is configured).
RUN_APT_NEEDS := redis-server:redis-server
# command:debian-package pairs the tests need on the machine (a command may be an absolute path).
APT_NEEDS := $(RUN_APT_NEEDS) redis-cli:redis-tools git:git curl:curl nginx:nginx-light \
  lighttpd:lighttpd docker-registry:docker-registry skopeo:skopeo npm:npm
# The npm registry (verdaccio) the package tests run against.
NODE_PEERS := tests/peers_node/node_modules/.package-lock.json
# Each mk/*.mk fragment may add to APT_NEEDS and INSTALL_TARGETS (extra install steps).
INSTALL_TARGETS := $(NODE_PEERS)
-include $(sort $(wildcard mk/*.mk))

.PHONY: all install install-run system-deps run-system-deps test lint typecheck run check clean

all: test

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "jobgate needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# Python packages the gateway runs with (no test tools).
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

# $(call apt_check,PAIRS): install the Debian packages of PAIRS whose command is missing (through
# apt-get when root, else print the line to run). Commands in /usr/sbin count for non-root users too.
define apt_check
	@missing=""; \
	for pair in $(1); do \
	  cmd="$${pair%:*}"; pkg="$${pair##*:}"; \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v "$$cmd" >/dev/null 2>&1 || case " $$missing " in \
	    *" $$pkg "*) ;; *) missing="$$missing $$pkg" ;; esac; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "missing system packages; run: sudo apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	fi
endef

system-deps:
	$(call apt_check,$(APT_NEEDS))

run-system-deps:
	$(call apt_check,$(RUN_APT_NEEDS))

install: $(STAMP) system-deps $(INSTALL_TARGETS)

# What `make run` and `make check` need: the gateway's Python packages and redis-server.
install-run: $(RUN_STAMP) run-system-deps

$(NODE_PEERS): tests/peers_node/package.json tests/peers_node/package-lock.json | system-deps
	npm ci --prefix tests/peers_node --no-audit --no-fund --loglevel=error

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

check: install-run
	$(BIN)/jobgate check --config $(CONFIG)

run: install-run
	$(BIN)/jobgate serve --config $(CONFIG)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
