# The two commands a new user needs: `make up` (the embedded stack with sample data) and
# `make test` (lint + the whole suite). Both create .venv and install on first use.
VENV  := .venv
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: up test lint bench clean postgres-binaries
BENCH_STAMP := $(VENV)/.bench-$(shell sha1sum pyproject.toml | cut -c1-12)

$(STAMP): pyproject.toml
	@$(MAKE) -s postgres-binaries
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -qq --upgrade pip
	$(VENV)/bin/python -m pip install -qq -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

up: $(STAMP)
	$(VENV)/bin/crmsync up

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/python -m pytest

$(BENCH_STAMP): $(STAMP)
	$(VENV)/bin/python -m pip install -qq -e '.[test,bench]'
	rm -f $(VENV)/.bench-*
	touch $@

# The embedded stack's throughput, latency, snapshot speed, memory and quota use against the
# emulators (about 45 min on 2 cores): bench/results/pipeline.{json,md,png}. Not a test.
bench: $(BENCH_STAMP)
	$(VENV)/bin/python -m bench.pipeline

# Identity matching: quality on generated duplicates (about 30 s), then speed against
# 1,000,000 customers in a throwaway PostgreSQL (about 8 min on 2 cores); bench/results/identity.*
.PHONY: bench-identity
bench-identity: $(STAMP)
	$(VENV)/bin/python -m bench.identity quality
	$(VENV)/bin/python -m bench.identity speed

clean:
	rm -rf $(VENV) .crmsync

# The PostgreSQL server binaries (initdb, pg_ctl) the embedded stack and the tests start a
# cluster from: installed from Debian's packages when run as root, named otherwise. No
# system-wide cluster is created; crmsync makes its own under .crmsync/.
postgres-binaries:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    mkdir -p /etc/postgresql-common/createcluster.d && \
	    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/crmsync.conf && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15; \
	  else \
	    echo "crmsync needs the PostgreSQL server binaries: sudo apt-get install postgresql-15"; exit 1; \
	  fi; \
	fi
