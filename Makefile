# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/audit_stream_demo
# The demo's processes connect as a runtime role that can read history but never write,
# delete or skip it (README, "Deployment"); migrations run as DATABASE_URL's role, the owner.
DEMO_RUNTIME_ROLE ?= audit_stream_demo_app
export RUNTIME_DATABASE_URL ?= postgres://$(DEMO_RUNTIME_ROLE)@127.0.0.1:5432/audit_stream_demo
export REDIS_URL ?= redis://127.0.0.1:6379/0
# The test suite's database and Redis database (override to run two suites side by side).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/audit_stream
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: demo test test-partitioned lint bench-write bench-plan-cache bench-stream bench-retention bench-webhooks bench-sinks bench-dashboard services install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,demo]"
	touch $@

install: $(VENV)/.installed

services:
	./scripts/services.sh audit_stream_demo

# Set everything up and run the demo stack (web + admin on http://127.0.0.1:8000/).
demo: install services
	DJANGO_SETTINGS_MODULE=demo.settings $(PY) manage.py migrate --no-input
	DJANGO_SETTINGS_MODULE=demo.settings $(PY) manage.py demo_setup
	psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$(DEMO_RUNTIME_ROLE)'" | grep -q 1 \
		|| psql -h 127.0.0.1 -U postgres -qc 'CREATE ROLE "$(DEMO_RUNTIME_ROLE)" LOGIN'
	DJANGO_SETTINGS_MODULE=demo.settings $(PY) manage.py audit_stream_grants $(DEMO_RUNTIME_ROLE) --apply
	$(VENV)/bin/honcho start

# Set everything up and run the whole test suite against real services.
test: install
	./scripts/services.sh
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) -m pytest $(PYTEST_ARGS)

# The suite's modules CI also runs on the partitioned layout (README, "Partitioned history"):
# every event table, the row log and the change feed partitioned; a database of its own.
PARTITIONED_TESTS ?= tests/test_partitions.py tests/test_change_partitions.py tests/test_change_retention.py \
	tests/test_unfolded.py tests/test_aggregate.py tests/test_fold_concurrency.py tests/test_partition_counts.py \
	tests/test_retention_contexts.py
test-partitioned: install
	./scripts/services.sh
	AUDIT_STREAM_TEST_PARTITIONED=1 DATABASE_URL=$(TEST_DATABASE_URL)_partitioned REDIS_URL=$(TEST_REDIS_URL) \
		$(PY) -m pytest $(PYTEST_ARGS) $(PARTITIONED_TESTS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Benchmarks (see BENCHMARKS.md); each recreates its own database.
bench-write: install services
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks.write

bench-plan-cache: install services
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks.plan_cache

bench-stream: install services
	$(PY) -m benchmarks.stream

bench-retention: install services
	$(PY) -m benchmarks.retention

bench-webhooks: install services
	$(PY) -m benchmarks.webhooks

bench-sinks: install services
	$(PY) -m benchmarks.sinks

bench-dashboard: install services
	$(PY) -m benchmarks.dashboard
