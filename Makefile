# pgsafe.backup -- build and test entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV        := $(CURDIR)/.venv
PY          := $(VENV)/bin/python
COLLECTIONS := $(CURDIR)/.build/collections
# Content key of the requirements: the venv is reinstalled only when it changes.
REQ_KEY     := $(shell cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-32)
# pytest-ansible (when present) writes symlink farms; the cache provider writes .pytest_cache.
PYTEST      := $(PY) -m pytest -p no:cacheprovider -p no:pytest-ansible
PYTEST_ARGS ?=
# Functional tests are independent (own cluster, own ports, own moto server per worker):
# two workers, one file per worker so module-scoped clusters are built once. Measured
# 15.1 s serial -> 9.6 s here. `make functional XDIST=` runs them serially.
XDIST       ?= -n 2 --dist loadfile

# Steps run in order and stop at the first failure, even under `make -j`.
.NOTPARALLEL:

define header
	@printf '\n=== %s ===\n' "$(1)"
endef

.PHONY: help test venv system-deps unit functional sanity lint molecule promtool demo bench wheelhouse clean

help:
	@echo "make test         system-deps, venv, then unit functional sanity lint molecule promtool (what CI runs)"
	@echo "make demo         run scripts/demo.sh"
	@echo "make bench        run bench/run.py"
	@echo "make wheelhouse   wheels for hosts without PyPI (WHEELHOUSE=dir WHEELHOUSE_PYTHON=3.11 WHEELHOUSE_PLATFORM=...)"
	@echo "make venv | system-deps | unit | functional | sanity | lint | molecule | promtool | clean"

test: system-deps venv
	@$(MAKE) --no-print-directory unit functional sanity lint molecule promtool
	@printf '\n=== all checks passed ===\n'

system-deps:
	$(call header,system-deps)
	@bash scripts/system_deps.sh

venv:
	$(call header,venv)
	@if [[ ! -x "$(PY)" ]]; then \
	    echo "creating $(VENV)"; \
	    if command -v python3.11 >/dev/null 2>&1 && python3.11 -c '' 2>/dev/null; then \
	        python3.11 -m venv "$(VENV)"; \
	    else \
	        python3 -m venv "$(VENV)"; \
	    fi; \
	fi
	@if [[ "$$(cat "$(VENV)/.stamp" 2>/dev/null)" != "$(REQ_KEY)" ]]; then \
	    echo "installing requirements-dev.txt"; \
	    "$(PY)" -m pip install -q --disable-pip-version-check -r requirements-dev.txt; \
	    echo "$(REQ_KEY)" > "$(VENV)/.stamp"; \
	else \
	    echo "requirements up to date"; \
	fi
	@bash scripts/venv_extras.sh "$(VENV)"

unit:
	$(call header,unit tests)
	@$(PYTEST) tests/unit $(PYTEST_ARGS) || { rc=$$?; [[ $$rc -eq 5 ]] && echo "unit: no tests collected"; [[ $$rc -eq 5 ]]; }

functional:
	$(call header,functional tests)
	@$(PYTEST) tests/functional $(XDIST) $(PYTEST_ARGS) || { rc=$$?; [[ $$rc -eq 5 ]] && echo "functional: no tests collected"; [[ $$rc -eq 5 ]]; }

sanity:
	$(call header,ansible-test sanity)
	@VENV="$(VENV)" bash scripts/sanity.sh

lint:
	$(call header,ansible-lint)
	@PATH="$(VENV)/bin:$$PATH" "$(VENV)/bin/ansible-lint" --offline --nocolor --profile production

molecule:
	$(call header,molecule)
	@shopt -s nullglob; scenarios=(molecule/*/molecule.yml); \
	if (( $${#scenarios[@]} == 0 )); then echo "molecule: no scenarios in molecule/*/molecule.yml"; exit 0; fi; \
	export PATH="$(VENV)/bin:$$PATH" ANSIBLE_COLLECTIONS_PATH="$(COLLECTIONS)"; \
	for file in "$${scenarios[@]}"; do \
	    scenario=$$(basename "$$(dirname "$$file")"); \
	    printf -- '--- molecule scenario %s ---\n' "$$scenario"; \
	    molecule test -s "$$scenario"; \
	done

promtool:
	$(call header,promtool)
	@if [[ -f tests/promtool/run.sh ]]; then PATH="$(VENV)/bin:$$PATH" bash tests/promtool/run.sh; \
	else echo "promtool: tests/promtool/run.sh not present"; fi

demo: system-deps venv
	$(call header,demo)
	@PATH="$(VENV)/bin:$$PATH" bash scripts/demo.sh

bench: venv
	$(call header,bench)
	@PATH="$(VENV)/bin:$$PATH" "$(PY)" bench/run.py

# Wheels of the install role's pins for database hosts without PyPI access
# (pgsafe_install_wheelhouse): see docs/install.md.
WHEELHOUSE          ?= $(CURDIR)/.build/wheelhouse
WHEELHOUSE_PYTHON   ?= 3.11
WHEELHOUSE_PLATFORM ?= manylinux_2_28_x86_64
wheelhouse: venv
	$(call header,wheelhouse)
	@bash scripts/wheelhouse.sh "$(WHEELHOUSE)" "$(WHEELHOUSE_PYTHON)" "$(WHEELHOUSE_PLATFORM)"

clean:
	rm -rf .build/sanity tests/output
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
