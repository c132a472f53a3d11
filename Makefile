# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
API_PORT ?= 8000
UI_PORT ?= 8501

.PHONY: install demo test test-fast mutation bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: pip takes this build from the machine's wheel cache
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/xception-demo up --host $(HOST) --api-port $(API_PORT) --ui-port $(UI_PORT)

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

$(VENV)/.mutation-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,mutation]'
	touch $@

# Mutation testing of the modules listed in pyproject.toml ([tool.mutation]): tens of minutes,
# so not part of `make test`. `make mutation MODULES="convert limits"` runs some of them only;
# MUTATION_ARGS="--workers 2" on an idle machine, "--resume" to finish an interrupted run.
mutation: $(VENV)/.mutation-installed
	$(PY) tools/mutation.py $(MUTATION_ARGS) $(MODULES)

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts .mutation
