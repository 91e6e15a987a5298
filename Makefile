# The commands people type. Each installs what it is missing first, so a fresh clone works.
SHELL := /bin/bash
VENV  := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench install services

install: $(STAMP)

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml scripts/bootstrap.sh scripts/axe/package-lock.json
	scripts/bootstrap.sh
	@touch $@

run: $(STAMP)
	scripts/run.sh

test: $(STAMP)
	scripts/test.sh

lint: $(STAMP)
	scripts/lint.sh

bench: $(STAMP)
	scripts/bench.sh

services:
	scripts/services.sh
