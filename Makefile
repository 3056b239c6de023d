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

BENCH_OUT ?= /tmp/backdoor-lab-bench

# The README's figure tables, in the order they appear there (the runs under $(BENCH_OUT) are reused).
bench: $(VENV)/.installed
	$(PY) bench/cbd_targets.py --out $(BENCH_OUT)
	$(PY) bench/fb_capture.py --attacks badnets blend trojan
	$(PY) bench/fb_capture.py --attacks wanet --seeds 0 1 2
	$(PY) bench/presets.py --out $(BENCH_OUT) --seeds 0 1 2 --extra "sig 0.1" "sig 0.025"
	$(PY) bench/cbd_targets.py --out $(BENCH_OUT) --datasets mnist5k --attacks blend badnets --cbd cbd:backdoor_loss=final
	$(PY) bench/cbd_targets.py --out $(BENCH_OUT) --datasets mnist5k --cbd cbd:mi_weight=0
	$(PY) bench/cbd_targets.py --out $(BENCH_OUT) --datasets mnist5k mnist1k mnist2k mnist20 --cbd cbd:keep_lowest_from=start
	$(PY) bench/defense_quality.py --defenses abl nonlinearity --seeds 0 1 2 --threads 1 --out $(BENCH_OUT)
	$(PY) bench/speed.py
	$(PY) bench/dashboard.py

clean-venv:
	rm -rf $(VENV)
