# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test mnist benchmark clean

# The virtual environment, installed from the pinned lock file (torch and torchvision come from
# local wheels where pip finds them; see ../shared/DESIGN.md).
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	# torchattacks is only an independent cross-check in the tests; its own pins would clash.
	$(BIN)/pip install -q --no-deps torchattacks==3.5.1
	touch $@

# A miniature of the paper's Table 1 on real MNIST (sweeps/demo.yaml; MNIST fetched first when absent) on
# a local Ray with SQLite MLflow (./mlflow.db), then its report (./reports/): the table, the paper's numbers
# beside ours, is printed with the command that opens the MLflow UI. Where no route to MNIST exists it says
# so and runs the digits smoke sweep (sweeps/smoke.yaml). Run again, it reports again.
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

# Debian's podman, for the CI check of the images (tests/e2e/test_images.py builds the Dockerfile's
# torch-less `sources` stage, no network, ~10 s); installed only when missing. Without it that tier skips
# and only the static checks of docker/ run.
PODMAN := /usr/bin/podman
$(PODMAN):
	DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc \
	  || echo "WARNING: could not install Debian's podman: tests/e2e/test_images.py builds no image" >&2

# Real MNIST, fetched once into the cache outside the checkout that runs and tests read by default
# (ieskips.data.default_root(): $IESKIPS_DATA, else ~/.cache/ieskips/data; routes and checksums: README,
# "Data"); already there and verified, nothing is fetched. Where no route answers: a warning here, and the
# tests that read the real files (tests/data/) fail loudly; they never skip.
mnist: $(STAMP)
	$(BIN)/ieskips data fetch mnist \
	  || echo "WARNING: could not fetch MNIST: the tests that read the real files (tests/data/) will fail" >&2

test: $(STAMP) $(CHROMIUM) $(POSTGRES) $(PODMAN) mnist
	$(BIN)/python -m pytest

benchmark: $(STAMP)
	$(BIN)/python benchmarks/ie_overhead.py

clean:
	rm -rf $(VENV)
