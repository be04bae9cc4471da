# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test benchmark clean

# The virtual environment, installed from the pinned lock file (torch and torchvision come from
# local wheels where pip finds them; see ../shared/DESIGN.md).
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	# torchattacks is only an independent cross-check in the tests; its own pins would clash.
	$(BIN)/pip install -q --no-deps torchattacks==3.5.1
	touch $@

# The smoke sweep (sweeps/smoke.yaml) on a local Ray with SQLite MLflow (./mlflow.db), then its report
# (./reports/): the table is printed, with the command that opens the MLflow UI. Run again, it reports again.
demo: $(STAMP)
	$(BIN)/ieskips demo

# Debian's chromium for the browser test (tests/e2e/test_mlflow_ui.py), installed only when missing.
# Without it that test fails (it never skips).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
	  || echo "WARNING: could not install Debian's chromium: tests/e2e/test_mlflow_ui.py will fail" >&2

# Debian's PostgreSQL, the MLflow backend store of tests/orchestration/test_evaluation_cluster.py (as
# docker compose runs it), installed only when missing. Without it that test fails (it never skips).
POSTGRES := /usr/lib/postgresql
$(POSTGRES):
	DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql \
	  || echo "WARNING: could not install Debian's postgresql: tests/orchestration/test_evaluation_cluster.py will fail" >&2

test: $(STAMP) $(CHROMIUM) $(POSTGRES)
	$(BIN)/python -m pytest

benchmark: $(STAMP)
	$(BIN)/python benchmarks/ie_overhead.py

clean:
	rm -rf $(VENV)
