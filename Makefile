# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8765
DATA_DIR ?= ~/.bamboo/sessions
PYTEST_ARGS ?=
# Test processes side by side (pytest-xdist): two per core, at most eight. Most tests
# wait on sockets, timers and child processes: on two cores, two processes left the
# cores idle half the run (878 s) and four keep them busy (590 s). 0 runs it in one
# process (what `-x` or a debugger needs). Each process takes a share of the tests, in
# order (the slowest modules first, tests/durations.txt; a module's tests together),
# and one that runs out takes half of what another has left ("worksteal"): xdist's
# default hands tests out in shrinking chunks and could leave one process idle for the
# last long tests of another. The cores are those this process may run on where the
# system says (Linux), else all of them (macOS has no sched_getaffinity).
PYTEST_WORKERS ?= $(shell $(PYTHON) -c "import os; cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1; print(min(8, 2 * cores))")

.PHONY: serve record-commit test lint typecheck warm pytest bench fuzz clean constraints

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# setup.py records the commit installed from (bamboo_session/BUILD_COMMIT): an editable
# install keeps it until the next one, which a change to any of these three brings.
$(STAMP): pyproject.toml setup.py constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,redis]'
	touch $(STAMP)

# constraints.txt afresh: the newest versions pyproject.toml allows, resolved in a
# scratch virtualenv (not .venv: what it holds beyond them, atheris say, stays out).
constraints:
	rm -rf build/constraints-venv
	$(PYTHON) -m venv build/constraints-venv
	build/constraints-venv/bin/python -m pip install --quiet --upgrade pip
	build/constraints-venv/bin/python -m pip install --quiet -e '.[dev,redis]'
	sed -n '/^#/p' constraints.txt > build/constraints.txt
	build/constraints-venv/bin/python -m pip freeze --exclude-editable >> build/constraints.txt
	mv build/constraints.txt constraints.txt
	rm -rf build/constraints-venv

# An editable install's record (above) is of the commit it was installed at, which the
# tree moves past at every pull: `make serve` records the tree's commit again first, so
# that the listening line and /metrics name the code that runs: `unknown` where git
# cannot describe the checkout (missing, or refusing it), not the stale record. A tree
# that is no git checkout keeps its record (an sdist's).
record-commit:
	@if [ -e .git ]; then \
		described=$$(git describe --always --dirty 2>/dev/null); \
		echo "$${described:-unknown}" > bamboo_session/BUILD_COMMIT; \
	fi; true

serve: $(STAMP) record-commit
	$(BIN)/bamboo-session serve --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR)

# lint, mypy and the warm-up of pytest below each keep one core busy: side by side.
test: $(STAMP)
	$(MAKE) --no-print-directory -j2 lint typecheck warm
	$(MAKE) --no-print-directory pytest WARMED=1

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow setuptools' editable import hook, so it checks the package
# through a farm of symlinks laid out as the installed package would be. bench/ sits
# beside it as the top-level package it is when run (`python -m bench.<script>` from
# the repo root), so its imports of bamboo_session resolve to the same farm and each
# module is seen under one name only.
typecheck: $(STAMP)
	rm -rf build/typecheck && mkdir -p build/typecheck/bamboo_session
	cp bamboo_session/*.py bamboo_session/py.typed build/typecheck/bamboo_session/
	for pkg in protocol persistence server; do ln -s ../../../$$pkg build/typecheck/bamboo_session/$$pkg; done
	ln -s ../../bench build/typecheck/bench
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p bamboo_session -p bench

# The tests start hundreds of Python processes (servers, CLI runs, crash children), and
# each compiles from source every module of ours it imports that has no bytecode:
# 0.45 s of a server's 1.2 s of CPU where PYTHONDONTWRITEBYTECODE is set, as on machines
# that keep source trees clean. Compiled once here, they read it (the variable stops
# writing, not reading) and none has to write (a child under a small RLIMIT_FSIZE could
# not). Likewise each test process rewrites the asserts of every test module it collects
# (14 s of CPU on a fresh clone) unless it finds them rewritten in tests/__pycache__: one
# collection first, allowed to write, leaves them there for all. Its errors, if any, are
# the run's own and are reported by it.
warm: $(STAMP)
	$(BIN)/python -m compileall -q -j 0 bamboo_session protocol persistence server tests bench
	-PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q --collect-only -p no:cacheprovider $(PYTEST_ARGS) > /dev/null 2>&1

pytest: $(STAMP) $(if $(WARMED),,warm)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

# Coverage-guided fuzzing (atheris, libFuzzer) of what a peer or a damaged disk can
# reach: each tests/fuzz/fuzz_*.py for FUZZ_SECONDS; corpora, and any crashing input,
# under build/fuzz/. Not part of `make test`: a time bound, not a verdict.
FUZZ_SECONDS ?= 60
FUZZ_ARGS ?= -timeout=20 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1

fuzz: $(STAMP)
	$(BIN)/python -m pip install --quiet atheris
	mkdir -p build/fuzz/crashes
	set -e; for harness in tests/fuzz/fuzz_*.py; do \
		name=$$(basename $$harness .py); echo "== $$name ($(FUZZ_SECONDS) s)"; \
		$(BIN)/python $$harness -max_total_time=$(FUZZ_SECONDS) $(FUZZ_ARGS) \
			-artifact_prefix=build/fuzz/crashes/$$name- ; \
	done

clean:
	rm -rf $(VENV) build .mypy_cache .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name node_modules -prune -o -name __pycache__ -type d -exec rm -rf {} +
