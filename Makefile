# slide-triage: the two README commands are `make demo` and `make test`; both set everything up first.
# Set-up is a Python 3.11 virtual environment in .venv with the exact pins of pyproject.toml; it is
# re-done only when pyproject.toml changes (the stamp file name carries its hash).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
CORES ?= 2
# The slide viewer's client: OpenSeadragon (BSD-3-Clause) from the npm registry, pinned; kept in .gl/ (git-ignored).
OSD_VERSION := 6.1.1
OSD_STAMP := .gl/osd/.installed-$(OSD_VERSION)
PORT ?= 8765

.PHONY: setup slides demo test lint benchmark osd view benchmark-viewer clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "error: Python 3.11 is required (torch 2.14.1 wheels); set PYTHON=/path/to/python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q --upgrade "pip>=24"
	$(PY) -m pip install --disable-pip-version-check -q -e .
	rm -f $(VENV)/.installed-*
	touch $@

# OpenSeadragon for `make view` (and its browser test). Without npm, or offline, this says so and carries on: the
# viewer then says how to install it, and the browser test skips.
osd:
	@if [ -f $(OSD_STAMP) ]; then :; \
	elif command -v npm >/dev/null 2>&1; then \
	  { rm -rf .gl/osd && npm install --prefix .gl/osd --no-save --no-audit --no-fund --ignore-scripts \
	    openseadragon@$(OSD_VERSION) && touch $(OSD_STAMP); } || \
	  echo "note: npm could not install OpenSeadragon $(OSD_VERSION) (offline?); \`make osd\` retries"; \
	else echo "note: npm not found, so OpenSeadragon $(OSD_VERSION) is not installed and \`make view\` shows no slide;" \
	  "install Node.js/npm (apt-get install npm) and run \`make osd\`"; fi

slides: setup
	$(PY) -m pipeline make-slides --cohort sample --out slides_sample

demo: slides
	@$(SNAKEMAKE) --profile configs/profiles/local --unlock >/dev/null 2>&1 || true  # a killed run's lock
	$(SNAKEMAKE) --profile configs/profiles/local --cores $(CORES)
	@echo "Open results/report.html (decision support, not a diagnosis)."
	@echo "Review the slides in deep zoom with the evidence overlaid: make view  (then open http://127.0.0.1:$(PORT)/)"

# The run's page and deep-zoom slide and case views on http://127.0.0.1:$(PORT)/ (loopback only; Ctrl-C stops).
view: setup osd
	$(PY) -m pipeline view results --port $(PORT)

test: slides osd
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check pipeline tests
	$(SNAKEMAKE) --lint

benchmark: setup
	$(PY) -m pipeline benchmark

# Deep-zoom tile latency of the viewer (p95 cold and warm) on the slides of the last run (make demo first).
benchmark-viewer: setup
	$(PY) -m pipeline bench-view results

clean:
	rm -rf results logs benchmarks .snakemake
