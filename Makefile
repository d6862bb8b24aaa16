# The two commands of the README: `make demo` (install + the main job) and `make test`.
# Everything installs into .venv with torch pinned by constraints.txt (CPU wheel, no CUDA download).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench clean pictures

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m graphexec demo --out out/demo

test: $(STAMP)
	$(PY) -m ruff check graphexec tests examples benchmarks
	$(PY) -m pytest

# Every picture in docs/img, each timed one the median of several runs, and the numbers
# docs/pictures.md quotes beside them.
pictures: $(STAMP)
	$(PY) docs/make_pictures.py

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
