# make test: create .venv when missing, install mmnet with its test extras, run the tests.
# make demo: the same install, then synthesise a dataset, train a tiny MMNet on CPU, evaluate it
#            and write runs/demo/report.md with pictures.
# make demo-generalized: the same on expressions that name several shapes or none, with the
#            no-target head (runs/demo_generalized/report.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build to install; override for another accelerator, e.g. TORCH="torch torchvision".
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test demo demo-generalized clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

test: install
	$(PY) -m pytest -q

demo: install
	$(PY) -m mmnet.cli demo --out runs/demo

demo-generalized: install
	$(PY) -m mmnet.cli demo --generalized --out runs/demo_generalized

clean:
	rm -rf $(VENV) runs/demo runs/demo_generalized
