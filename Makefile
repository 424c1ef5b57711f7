# The two README commands: `make run` and `make test`. Everything else they need is built here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# make run SOCKET=/path/to.sock to listen elsewhere than the daemon's default socket.
SOCKET ?=

.PHONY: all venv proto proto-check run test test-python test-node conformance bench install clean

all: venv

# The venv is rebuilt only when the dependency lists change (the stamp is newer otherwise).
$(VENV)/.stamp: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q grpcio-tools==1.85.1
	$(PY) -m pip install -q -e clients/python -e '.[test]'
	touch $@

venv: $(VENV)/.stamp

proto: venv
	$(PY) tools/gen_proto.py

proto-check: venv
	$(PY) tools/gen_proto.py --check

# Starts the daemon in the foreground with the default config, on its default socket
# (/run/isorund/isorund.sock as root), where clients look when $ISORUN_SOCKET is unset.
run: venv
	$(PY) -m isorund $(if $(SOCKET),--socket $(SOCKET))

clients/node/node_modules/.stamp: clients/node/package.json
	cd clients/node && npm install --no-audit --no-fund --silent
	touch $@

test: test-python test-node

test-python: venv
	$(PY) -m pytest -q

test-node: venv clients/node/node_modules/.stamp
	cd clients/node && ISORUN_PYTHON=$(CURDIR)/$(PY) node --test --test-concurrency=1 test/

conformance: venv
	$(PY) -m pytest -q ../shared/conformance

bench: venv
	$(PY) -m pip install -q matplotlib
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .run clients/node/node_modules
