# Backdoor Lab: `make app` runs the dashboard, `make test` runs the tests, `make bench` the benchmarks.
# Each target creates .venv and installs the requirements on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: app test bench clean-venv

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel
	$(PY) -m pip install -r requirements.txt -r requirements-dev.txt
	touch $@

app: $(VENV)/.installed
	$(PY) -m streamlit run app.py

test: $(VENV)/.installed
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) bench/speed.py
	$(PY) bench/dashboard.py
	$(PY) bench/defense_quality.py

clean-venv:
	rm -rf $(VENV)
