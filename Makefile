# The two commands: `make demo` (the whole lifecycle locally) and `make test`.
# Every target sets up what it needs, idempotently.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODELOPS := $(VENV)/bin/modelops
STAMP := $(VENV)/.installed

.PHONY: test unit tools deps cluster-up cluster-down cluster-status crds clean

# System packages the local world needs (Debian); skipped when already present.
deps:
	@missing=""; for c in openssl:openssl iptables:iptables ip:iproute2 unshare:util-linux nsenter:util-linux; do \
	  command -v $${c%%:*} >/dev/null || missing="$$missing $${c##*:}"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing; fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[trainer,serving,test]'
	touch $@

venv: $(STAMP)

# Kubernetes control plane, etcd, kwok, helm, built from the pinned Go modules (cached outside git).
tools:
	e2e/tools/build.sh >/dev/null

cluster-up: deps venv tools
	$(MODELOPS) dev cluster up

cluster-down:
	@test -x $(MODELOPS) && $(MODELOPS) dev cluster down || true

cluster-status: venv
	$(MODELOPS) dev cluster status

crds: venv
	$(MODELOPS) crds

unit: venv
	$(PY) -m pytest tests/unit -q

test: deps venv tools
	$(PY) -m pytest -q

clean: cluster-down
	rm -rf .cluster .pytest_cache
