# The transformers floor: the oldest release our Hub files pass the parity tests on (docs/compatibility.md). Newer
# internals (SubConfigSpec, the `cache` keyword) are bridged in the Hub files by feature tests, not version checks.
# Included by the Makefile; also works alone: `make -f Makefile -f ci/floor.mk test-floor`.
TRANSFORMERS_FLOOR := 5.19.0

PYTHON ?= python3.11
CONSTRAINTS ?= ci/constraints.txt
FLOOR_VENV := .venv-floor
FLOOR_PY := $(FLOOR_VENV)/bin/python
# Keyed on the floor version: raising TRANSFORMERS_FLOOR reinstalls into the same venv.
FLOOR_STAMP := $(FLOOR_VENV)/.installed-transformers-$(TRANSFORMERS_FLOOR)
# The parity and conformance tests against transformers' native classes, and the checkpoint round trips; the rest of
# the suite runs on the ceiling only.
FLOOR_TESTS := tests/test_import_time.py tests/test_text_parity.py tests/test_multimodal_parity.py tests/test_conformance.py tests/test_checkpoint.py

.PHONY: test-floor venv-floor clean-floor

venv-floor: $(FLOOR_STAMP)

# The project as `make test` installs it (the exact versions in ci/constraints.txt), then only transformers moves
# to the floor. A candidate outside pyproject's range installs too, with a pip warning (docs/compatibility.md).
$(FLOOR_STAMP): pyproject.toml $(CONSTRAINTS)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3)"; exit 1; }
	test -x $(FLOOR_PY) || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_PY) -m pip install --upgrade pip
	$(FLOOR_PY) -m pip install -c $(CONSTRAINTS) -e ".[dev]"
	$(FLOOR_PY) -m pip install "transformers==$(TRANSFORMERS_FLOOR)"
	rm -f $(FLOOR_VENV)/.installed-transformers-*
	touch $@

test-floor: $(FLOOR_STAMP)
	$(FLOOR_PY) -c "import transformers as t; v = '$(TRANSFORMERS_FLOOR)'; assert t.__version__ == v, (t.__version__, v)"
	$(FLOOR_PY) -m pytest -q -p no:cacheprovider $(FLOOR_TESTS)

clean-floor:
	rm -rf $(FLOOR_VENV)
