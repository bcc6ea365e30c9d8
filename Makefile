# tinyattn: the study's commands. `make study` is the main job, `make test` the tests.
VENV    ?= .venv
PY      := $(VENV)/bin/python
# This machine's CPU wheel of torch; on Colab / a GPU box: make install TORCH_SPEC=
TORCH_SPEC ?= torch==2.13.0
# The local copy of GLUE beside the checkout, when there is one (else the Hugging Face Hub).
ifneq ($(wildcard ../shared/data/glue),)
export TINYATTN_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: install test test-fast test-core lint study reproduce cpu-study book datasets-summary clean

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH_SPEC),$(PY) -m pip install -q "$(TORCH_SPEC)")
	$(PY) -m pip install -q -e ".[study,dev,book,ray]"
	$(PY) -m pip check
	touch $@

# Lint, then the full suite on every core (pytest-xdist: tests spread one by one over the workers, except
# a group that shares an expensive fixture, xdist_group, e.g. the built book); the 20 slowest are listed.
PYTEST_WORKERS ?= auto
test: install lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --durations=20

# The edit loop: the unit tests only (no end-to-end run, runner or notebook, no book, no chapters).
test-fast: install
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup -m "not slow and not e2e" \
		--ignore=tests/test_book.py --ignore=tests/test_chapters.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check tinyattn tests

# The main job: the default (quick) study profile, its aggregate, then the book.
PROFILE ?= quick
study: install
	$(VENV)/bin/tinyattn study --profile $(PROFILE)
	$(MAKE) book

# Rerun the profile's recorded runs into a fresh folder and compare each with its committed record
# (minutes for quick; JOBS runs at once, one thread each, as the records were made); writes results/reproduce/$(PROFILE).json, fails on an unexplained difference.
reproduce: install
	$(VENV)/bin/tinyattn reproduce --profile $(PROFILE) --jobs $(JOBS) --executor process

# The CPU-scale study, in order: learning rates on held-out training data, the GLUE grid, the
# ablations, the experts analysis (both profiles' four-expert runs), the book. Hours of CPU; every
# step resumes where it stopped.
JOBS ?= 2
cpu-study: install
	$(VENV)/bin/tinyattn study --profile tune --jobs $(JOBS)
	$(VENV)/bin/tinyattn study --profile cpu --jobs $(JOBS)
	$(VENV)/bin/tinyattn study --profile ablations --jobs $(JOBS)
	$(VENV)/bin/tinyattn analyse --profile ablations
	$(VENV)/bin/tinyattn analyse --profile cpu
	$(MAKE) book

# What the book quotes from the GLUE and FewGLUE files (split sizes, label counts, majority-class
# scores), counted into results/summary/datasets.json, so that the book builds from results/ alone,
# without the data.
datasets-summary: install
	$(PY) -m tinyattn.analysis.datasets_summary

# The book from the committed results: every page rebuilt (--all: the analysis notebooks read
# results/runs, which Sphinx does not track) and executed offline; any warning fails the build.
book: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
	$(VENV)/bin/jupyter-book build . --all --warningiserror --keep-going --quiet

# The core install (no extras: no notebooks, figures or `adapters`, tests/test_install.py checks it)
# on the newest transformers 5 and peft (the `adapters` extra pins transformers 4.57): the adapter, its PEFT route, data, metrics, training, the FewGLUE cloze protocol
# and the methods that come from peft or this library. Its own environment, .venv-tf5.
CORE_VENV ?= .venv-tf5
CORE_TESTS := tests/test_adapter.py tests/test_inject.py tests/test_peft.py tests/test_methods.py \
	tests/test_checkpoint.py tests/test_data.py tests/test_metrics.py tests/test_train.py \
	tests/test_stats.py tests/test_fewglue.py tests/test_cloze.py tests/test_install.py
test-core:
	python3 -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/python -m pip install -q --upgrade pip
	$(if $(TORCH_SPEC),$(CORE_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)")
	$(CORE_VENV)/bin/python -m pip install -q -e ".[dev]" "transformers>=5" "peft>=0.18"
	$(CORE_VENV)/bin/python -c "import transformers, peft; print('core env: transformers', transformers.__version__, '| peft', peft.__version__)"
	TINYATTN_CORE_ENV=1 $(CORE_VENV)/bin/python -m pytest -q -m "not slow" $(CORE_TESTS)
