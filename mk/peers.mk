# `make peers`: everything tests/peers.py drives (lighttpd + git-http-backend, docker-registry +
# skopeo, nginx, pypiserver, verdaccio), on a fresh Debian 12 machine. Idempotent: each step does
# nothing when its tools are already there. The including Makefile defines VENV (default .venv).

VENV ?= .venv
PEERS_PYTHON ?= python3
# command:debian-package pairs; a command may be an absolute path.
PEERS_APT := git:git /usr/lib/git-core/git-http-backend:git lighttpd:lighttpd \
  docker-registry:docker-registry skopeo:skopeo nginx:nginx-light node:nodejs npm:npm
PEERS_PIP := pypiserver[passlib]>=2.0
PEERS_PIP_CHECK := import pypiserver, passlib.apache
PEERS_NODE := tests/peers_node
# verdaccio 6.8.0 declares node >= 20 (Debian 12's own nodejs is 18).
PEERS_NODE_MAJOR := 20

.PHONY: peers peers-apt peers-pip peers-npm

peers: peers-apt peers-pip peers-npm

peers-apt:
	@missing=""; \
	for pair in $(PEERS_APT); do \
	  cmd="$${pair%:*}"; pkg="$${pair##*:}"; \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v "$$cmd" >/dev/null 2>&1 || case " $$missing " in \
	    *" $$pkg "*) ;; *) missing="$$missing $$pkg" ;; esac; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "peers: apt-get install -y --no-install-recommends$$missing"; \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "peers: missing system packages; run: sudo apt-get install -y --no-install-recommends$$missing" >&2; \
	    exit 1; \
	  fi; \
	fi

peers-pip:
	@test -x $(VENV)/bin/python || $(PEERS_PYTHON) -m venv $(VENV)
	@$(VENV)/bin/python -c '$(PEERS_PIP_CHECK)' 2>/dev/null || \
	  $(VENV)/bin/pip install --quiet --disable-pip-version-check '$(PEERS_PIP)'

peers-npm: peers-apt
	@major=$$(node -p 'process.versions.node.split(".")[0]'); \
	if [ "$$major" -lt $(PEERS_NODE_MAJOR) ]; then \
	  echo "peers: verdaccio 6.8.0 needs Node >= $(PEERS_NODE_MAJOR), node is $$(node --version)" >&2; exit 1; \
	fi
	@stamp=$(PEERS_NODE)/node_modules/.package-lock.json; \
	if [ ! -x $(PEERS_NODE)/node_modules/verdaccio/bin/verdaccio ] || \
	   [ $(PEERS_NODE)/package-lock.json -nt "$$stamp" ] || [ $(PEERS_NODE)/package.json -nt "$$stamp" ]; then \
	  echo "peers: npm ci --prefix $(PEERS_NODE)"; \
	  npm ci --prefix $(PEERS_NODE) --no-audit --no-fund --loglevel=error; \
	fi
