# The two commands of the README: `make demo` (install + the main job) and `make test`.
# Everything installs into .venv with torch pinned by constraints.txt (CPU wheel, no CUDA download).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A second venv holding what a plain `pip install graphexec` brings (no extras), for base-install
BASE       ?= $(VENV)-base
BASE_STAMP := $(BASE)/.installed

.PHONY: install demo test test-busy base-install torchvision-hook lint bench clean pictures

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(MAKE) --no-print-directory torchvision-hook
	touch $(STAMP)

# PyPI's torchvision for torch 2.13 is a CUDA build that cannot load beside the CPU torch
# ("operator torchvision::nms does not exist"): tools/torchvision_hook.py says why and what it
# does. Linked into the venv with a .pth line that imports it at start-up.
torchvision-hook:
	site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))') && \
	ln -sf "$(CURDIR)/tools/torchvision_hook.py" "$$site/_graphexec_torchvision_hook.py" && \
	echo "import _graphexec_torchvision_hook" > "$$site/_graphexec_torchvision_hook.pth"

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m graphexec demo --out out/demo

test: $(STAMP) base-install
	$(PY) -m ruff check graphexec tests examples benchmarks tools .ci
	$(PY) -m pytest
	$(MAKE) --no-print-directory test-busy

# The tests whose outcome a measurement decides (trials side by side, node times, the thread
# budget, drift re-checks, the decision cache, paired verdicts), once more with one core kept
# busy by a loop that .ci/busy_core.py starts and stops on every path (issue 34: on a busy
# machine a real trial went the other way). Their measurements run on fake clocks
# (tests/clocks.py), so load must not change an outcome. Random-DAG property tests decide
# nothing and stay in the main run. 45-70 s on a shared 2-core machine with one core busy.
DECIDING := tests/test_split.py tests/test_budget.py tests/test_tune.py tests/test_planner.py \
	tests/test_timing.py tests/test_cache.py graphexec/trials.py graphexec/budget.py \
	graphexec/tune.py graphexec/split.py graphexec/drift.py graphexec/timing.py \
	graphexec/cache.py graphexec/module.py

test-busy: $(STAMP)
	$(PY) .ci/busy_core.py $(PY) -m pytest -q -m "not dask and not gpu" \
		-k "not random_dags and not generated_programs" $(DECIDING)

# The package as a user installs it: no extras, so a dependency that only an extra brings in
# (numpy came with matplotlib) cannot hide. Installed again when the package changes (~25 s
# from scratch, ~10 s after), then the Dask executor runs from it (~4 s).
$(BASE_STAMP): pyproject.toml constraints.txt $(shell find graphexec -name '*.py')
	$(PYTHON) -m venv $(BASE)
	$(BASE)/bin/python -m pip install -q -c constraints.txt .
	touch $(BASE_STAMP)

base-install: $(BASE_STAMP)
	$(BASE)/bin/python .ci/base_install.py

# Every picture in docs/img, each timed one the median of several runs, and the numbers
# docs/pictures.md quotes beside them.
pictures: $(STAMP)
	$(PY) docs/make_pictures.py

bench: $(STAMP)
	$(PY) -m benchmarks.run

# What the build left too: setuptools' build/ and graphexec.egg-info/ (pip install, python -m build)
clean:
	rm -rf $(VENV) $(BASE) out .pytest_cache .ruff_cache build graphexec.egg-info
