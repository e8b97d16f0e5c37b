# Sonic Serve developer entry points. `make demo` and `make test` are all a newcomer needs.
VENV ?= .venv
PYTHON ?= python3
# These machines carry a CPU wheel of torch 2.13.0; on a GPU machine use e.g. `make TORCH_SPEC=torch demo`.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
SONIC := $(VENV)/bin/sonic-serve
# Tiny test weights are noise at any setting, so the demo keeps them cheap; with real weights in ./weights,
# `make demo DEMO_ARGS=` runs the reference defaults (25 steps, 512 px).
DEMO_ARGS ?= --min-resolution 192 --steps 4
PYTEST_ARGS ?=

.PHONY: install demo demo-local test lint clean loadtest-smoke

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# the demo goes through the whole local stack: Ray Serve, embedded S3, HTTP submit
demo: install
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/demo.sh $(DEMO_ARGS)

# the same job in one process, no Ray
demo-local: install
	$(SONIC) generate --image examples/portrait.png --audio examples/speech.wav -o out/demo.mp4 $(DEMO_ARGS)

test: install
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -q $(PYTEST_ARGS)

# a bounded Locust run (<= 60 s, a few users, tiny weights) against a local stack; prints the stats
loadtest-smoke: install
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -x -q -s tests/test_loadtest_smoke.py

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) out .pytest_cache
