# slide-triage: the two README commands are `make demo` and `make test`; both set everything up first.
# Set-up is a Python 3.11 virtual environment in .venv with the exact pins of pyproject.toml; it is
# re-done only when pyproject.toml changes (the stamp file name carries its hash).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
CORES ?= 2

.PHONY: setup slides demo test lint benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "error: Python 3.11 is required (torch 2.14.1 wheels); set PYTHON=/path/to/python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q --upgrade "pip>=24"
	$(PY) -m pip install --disable-pip-version-check -q -e .
	rm -f $(VENV)/.installed-*
	touch $@

slides: setup
	$(PY) -m pipeline make-slides --cohort sample --out slides_sample

demo: slides
	@$(SNAKEMAKE) --profile configs/profiles/local --unlock >/dev/null 2>&1 || true  # a killed run's lock
	$(SNAKEMAKE) --profile configs/profiles/local --cores $(CORES)
	@echo "Open results/report.html (decision support, not a diagnosis)."

test: slides
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check pipeline tests
	$(SNAKEMAKE) --lint

benchmark: setup
	$(PY) -m pipeline benchmark

clean:
	rm -rf results logs benchmarks .snakemake
