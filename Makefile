# Set-up is part of every target: a fresh machine needs only Python 3.11 and make.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench clean nginx postgresql prometheus xrootd wheel

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[server,test]'
	touch $(STAMP)

run: $(STAMP)
	VDATA_KERNEL_CACHE=data/kernels NUMBA_CACHE_DIR=data/numba MPLCONFIGDIR=data/matplotlib \
		$(VENV)/bin/vdata demo --data-dir data/demo

# Some tests start a real nginx, the database tests a real PostgreSQL server and the monitoring
# tests a real Prometheus, the root:// tests a real XRootD server, each in a temporary folder (Debian's
# packages; root installs them here and in CI).
# Two workers, one test file each at a time (module fixtures stay per file); about 11 minutes.
test: $(STAMP) nginx postgresql prometheus xrootd
	$(PY) -m pytest -n 2 --dist loadfile

nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || \
		(apt-get update -qq && apt-get install -y -qq nginx >/dev/null)

# The server binaries only (initdb, pg_ctl); the package's own cluster is not used.
postgresql:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq postgresql >/dev/null)

# The server binary only (the package's own service is not used; deploy/prometheus.yml is).
prometheus:
	@command -v prometheus >/dev/null 2>&1 || test -x /usr/bin/prometheus || \
		(apt-get update -qq && apt-get install -y -qq prometheus >/dev/null)

# The server binary only (the package's own service is not used; vdata.testing.XRootDServer runs it).
xrootd:
	@command -v xrootd >/dev/null 2>&1 || test -x /usr/bin/xrootd || \
		(apt-get update -qq && apt-get install -y -qq xrootd-server >/dev/null)

# The warm-delivery comparison needs nginx (Debian's package; root installs it here).
bench: $(STAMP) nginx postgresql xrootd
	$(PY) bench/read.py
	$(PY) bench/virtual.py
	$(PY) bench/throughput.py
	$(PY) bench/latency.py
	$(PY) bench/summary.py

# The wheel that cluster.yaml installs on every node (dist/vdata-<version>-py3-none-any.whl):
# this repository's code; PyPI's "vdata" is another project.
wheel: $(STAMP)
	rm -f dist/vdata-*.whl
	$(PY) -m pip wheel --no-deps -w dist .

clean:
	rm -rf $(VENV) data bench/results .pytest_cache .hypothesis dist
