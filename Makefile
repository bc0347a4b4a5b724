PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast lint run bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The suite mostly waits on the processes it starts (workers, Redis, the sandbox), so it
# runs on more xdist workers than the machine has cores; PYTEST_WORKERS overrides.
# loadgroup: the fault tests (xdist_group "faults", tests/conftest.py) run one at a time
# on one xdist worker; every other test goes wherever a worker is free.
PYTEST_WORKERS ?= 4
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --dist loadgroup

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest $(PYTEST_PARALLEL)

# After each edit: the unit and in-process tests (the session's Redis and the sandbox only;
# no celery worker, no CLI or make run as a process). make test runs them too.
test-fast: $(STAMP)
	$(BIN)/pytest $(PYTEST_PARALLEL) -m "not integration and not processes"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# exec: the recipe's shell becomes devstack, so the SIGTERM make passes on to its recipe
# (kill, timeout, an IDE's stop button) reaches devstack, which stops all it started;
# --stop-with-parent: so does make's death by SIGKILL.
run: $(STAMP)
	exec $(BIN)/python -m scripts.devstack --stop-with-parent

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .pytest_cache
