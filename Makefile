# The two README commands: `make run` and `make test`. Everything else they need is built here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# make run SOCKET=/path/to.sock to listen elsewhere than the daemon's default socket.
SOCKET ?=

.PHONY: all venv proto proto-check run test test-python test-tools test-node conformance bench install clean

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

clients/node/node_modules/.stamp: clients/node/package.json clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund --silent
	touch $@

test: test-python test-node

test-python: venv clients/node/node_modules/.stamp test-tools  # one test runs the Node client as another user
	$(PY) -m pytest -q

# Debian packages tests need: capsh runs the named-pipe check without the DAC capabilities, as
# the systemd unit's daemon has none (that test is skipped with a note when apt fails).
test-tools:
	@command -v capsh >/dev/null || apt-get install -y -q libcap2-bin >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libcap2-bin >/dev/null 2>&1) \
	  || echo "test: could not install libcap2-bin; the test that needs capsh will be skipped"

test-node: venv clients/node/node_modules/.stamp
	cd clients/node && ISORUN_PYTHON=$(CURDIR)/$(PY) node --test --test-concurrency=1 test/

conformance: venv
	$(PY) -m pytest -q ../shared/conformance

# The benchmark's own tools, installed on first use: matplotlib (the plot), vm2 (the peer
# isolated-runtime is built on) and bubblewrap (a peer; skipped with a note when apt fails).
# `make bench BENCH_ARGS=--quick` for the one-minute version.
BENCH_ARGS ?=
bench/peers/node_modules/.stamp: bench/peers/package-lock.json
	cd bench/peers && npm ci --no-audit --no-fund --silent
	touch $@

bench: venv
	$(PY) -m pip install -q matplotlib
	$(MAKE) --no-print-directory bench/peers/node_modules/.stamp || echo "bench: npm ci failed; the vm2 peer will be skipped"
	command -v bwrap >/dev/null || apt-get install -y -q bubblewrap >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1) \
	  || echo "bench: could not install bubblewrap; the bwrap peer will be skipped"
	$(PY) bench/run.py $(BENCH_ARGS)

# Installs the daemon for systemd (tools/install.sh): a venv under PREFIX, the unit, and
# /etc/isorund/isorund.toml unless one exists. `make install DESTDIR=/tmp/stage` stages it.
PREFIX  ?= /opt/isorun
DESTDIR ?=
install:
	PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) PYTHON=$(PYTHON) sh tools/install.sh

clean:
	rm -rf $(VENV) .run clients/node/node_modules
