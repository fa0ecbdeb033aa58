# The two README commands: `make demo` and `make test`. Both set everything up themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.flx-installed

.PHONY: demo test install tiny-weights install-gpu clean-demo

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch 2.13.0: a CPU build here (from local disk), a CUDA build from PyPI on a Linux workstation.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test,serve,distributed]"
	@touch $(STAMP)

install: $(STAMP)

# Tiny random-weight twins of every supported model family, written once into the weights root.
tiny-weights: $(STAMP)
	$(BIN)/python scripts/make_tiny_weights.py

demo: tiny-weights
	$(BIN)/flx demo --out outputs/demo

LINTED := engine scripts tests benchmarks

test: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check --quiet $(LINTED)
	$(BIN)/python -m pytest -q -p no:cacheprovider

# On a CUDA workstation: adds onnxruntime-gpu and xformers.
install-gpu: $(STAMP)
	$(BIN)/pip uninstall -y onnxruntime  # onnxruntime and onnxruntime-gpu must not be installed together
	$(BIN)/pip install -e ".[gpu,test]"

clean-demo:
	rm -rf outputs/demo
