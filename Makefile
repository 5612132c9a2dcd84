# Two commands for a newcomer:  `make serve`  and  `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL := models/default.onnx
BIND ?= 127.0.0.1:8000

.PHONY: serve test setup serve-setup model system-packages

## serve: install, build the demo model once, start gunicorn on $(BIND)
serve: serve-setup model
	MELANOMA_SECRET_KEY="$${MELANOMA_SECRET_KEY:-$$($(PY) -c 'import secrets; print(secrets.token_hex(32))')}" \
	MELANOMA_BIND="$(BIND)" MELANOMA_MODEL_CACHE_DIR="$${MELANOMA_MODEL_CACHE_DIR:-.cache/models}" \
	exec $(VENV)/bin/gunicorn -c gunicorn.conf.py

## test: install system and Python packages, then run the whole suite
test: system-packages setup browser-tools
	$(PY) -m pytest

# serve-setup: what serving and building the demo model need; setup: that plus the tests'
# and benches' tools. --no-compile: pip would byte-compile every one of ~16,000 files
# (over a minute on 2 cores) where a server imports a few hundred; those compile on
# first use, and the test setup compiles the rest in parallel (ignoring, as pip does, files
# some packages ship for newer Pythons, e.g. torch's py312_intrinsics.py).
serve-setup: $(VENV)/.installed-serve
setup: $(VENV)/.installed

# The groups of pyproject.toml, from their requirements files (the pins are written there).
SERVE_REQUIREMENTS := -r requirements.txt -r requirements-export.txt -r requirements-train.txt
# TensorFlow (requirements-keras.txt) is for exporting Keras models: the tests install it, a
# server never does.
DEV_REQUIREMENTS := -r requirements-keras.txt -r requirements-infra.txt -r requirements-bench.txt \
	-r requirements-security.txt -r requirements-dev.txt

$(VENV)/.installed-serve: pyproject.toml requirements.txt requirements-export.txt requirements-train.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile $(SERVE_REQUIREMENTS)
	# The project itself, editable: the console scripts (melanoma-serve, -export, -evaluate).
	$(PY) -m pip install --quiet --no-compile --no-deps -e .
	touch $@

$(VENV)/.installed: requirements*.txt $(VENV)/.installed-serve
	$(PY) -m pip install --quiet --no-compile $(SERVE_REQUIREMENTS) $(DEV_REQUIREMENTS)
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

model: $(MODEL)

# The demo model: drawn lesions, the training pipeline, the export path; built once (about
# 6 minutes on 2 cores, with progress bars), then reused.
$(MODEL): | $(VENV)/.installed-serve
	$(PY) export/demo_model.py --output $(MODEL)

system-packages:
	scripts/install-system-packages.sh system-packages.txt

# axe-core for the browser suite's accessibility checks: npm, into the git-ignored build/.
AXE_VERSION := 4.14.1
AXE := build/npm/node_modules/axe-core/axe.min.js

.PHONY: browser-tools
browser-tools: $(AXE)

$(AXE):
	npm install --prefix build/npm --no-save --no-audit --no-fund axe-core@$(AXE_VERSION)
