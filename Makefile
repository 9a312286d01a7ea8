# The README's two commands: `make demo` and `make test`. Both create .venv on first use, so a
# fresh clone needs nothing installed beforehand but python3 (with venv) and make. `make demo`
# installs only the runtime dependencies; `make test` adds the test extras (Helm SDK, linters, …).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
RUNTIME_STAMP := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed

.PHONY: demo test lint dashboards clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(PY)
	$(PIP) -e .
	touch $(RUNTIME_STAMP)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) -e '.[test]'
	touch $(STAMP)

demo: $(RUNTIME_STAMP)
	$(VENV)/bin/polarity-exporter --demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

# After changing the dashboards' generator or the alert rules: regenerate the JSON and refresh the
# Helm chart's copies (tests fail while they differ).
dashboards: $(STAMP)
	$(PY) grafana/generate.py
	helm/sync-chart-files.sh

clean:
	rm -rf $(VENV) build dist *.egg-info
