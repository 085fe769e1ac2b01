# The two commands: `make demo` (the whole lifecycle locally) and `make test`.
# Every target sets up what it needs, idempotently.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODELOPS := $(VENV)/bin/modelops
STAMP := $(VENV)/.installed
# Exact versions of every Python dependency (a pip constraints file; `make lock` refreshes it). Through
# PIP_CONSTRAINT it also pins the isolated build of the package (setuptools), as in docker/*.Dockerfile.
LOCK := requirements/lock.txt
PIP_LOCKED := PIP_CONSTRAINT=$(CURDIR)/$(LOCK) $(PY) -m pip

.PHONY: demo test unit lint tools deps cluster-up cluster-down cluster-status crds clean lock

# System packages the local world needs (Debian); skipped when already present. lua5.4 runs the Argo CD
# health scripts in docs/argocd/ in tests.
deps:
	@missing=""; for c in openssl:openssl iptables:iptables ip:iproute2 unshare:util-linux nsenter:util-linux prometheus:prometheus lua5.4:lua5.4; do \
	  command -v $${c%%:*} >/dev/null || missing="$$missing $${c##*:}"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) install -q pip
	$(PIP_LOCKED) install -q -e '.[trainer,serving,test]'
	touch $@

venv: $(STAMP)

# Re-resolve $(LOCK) from pyproject.toml against PyPI (pip's resolver, metadata only): pins that still fit
# are kept; UPGRADE=1 takes the newest of everything. tests/unit/test_lock.py checks the two agree.
lock:
	$(PYTHON) requirements/lock.py $(if $(UPGRADE),--upgrade)

# Kubernetes control plane, etcd, kwok, helm and Kueue (tests/integration/test_kueue.py), built from the
# pinned Go modules (cached outside git; Kueue's first build takes several minutes).
tools:
	e2e/tools/build.sh --kueue >/dev/null

cluster-up: deps venv tools
	$(MODELOPS) dev cluster up

cluster-down:
	@test -x $(MODELOPS) && $(MODELOPS) dev cluster down || true

cluster-status: venv
	$(MODELOPS) dev cluster status

crds: venv
	$(MODELOPS) crds

# The whole lifecycle on the local cluster (needs root for the pods' network and mount namespaces).
# KEEP=1 leaves the cluster running afterwards.
demo: deps venv tools
	$(PY) e2e/demo.py $(if $(KEEP),--keep)

unit: venv
	$(PY) -m pytest tests/unit -q

# The import contracts (lint-imports, pyproject [tool.importlinter]) and the type check (mypy, [tool.mypy]);
# tests/unit/test_layering.py runs both, so `make unit` and `make test` do too.
lint: venv
	$(PY) -m pytest tests/unit/test_layering.py -q

test: deps venv tools
	$(PY) -m pytest -q

clean: cluster-down
	rm -rf .cluster .pytest_cache
