# Two commands for a newcomer:  `make serve`  and  `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL := models/default.onnx
BIND ?= 127.0.0.1:8000

.PHONY: serve test setup model system-packages

## serve: install, build the demo model once, start gunicorn on $(BIND)
serve: setup model
	MELANOMA_SECRET_KEY="$${MELANOMA_SECRET_KEY:-$$($(PY) -c 'import secrets; print(secrets.token_hex(32))')}" \
	MELANOMA_BIND="$(BIND)" MELANOMA_MODEL_CACHE_DIR="$${MELANOMA_MODEL_CACHE_DIR:-.cache/models}" \
	exec $(VENV)/bin/gunicorn -c gunicorn.conf.py

## test: install system and Python packages, then run the whole suite
test: system-packages setup
	$(PY) -m pytest

setup: $(VENV)/.installed

$(VENV)/.installed: requirements*.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

model: $(MODEL)

# The demo model: draw synthetic lesions, train on them (CPU, a few minutes), export; once.
$(MODEL): | $(VENV)/.installed
	$(PY) export/demo_model.py --output $(MODEL)

system-packages:
	scripts/install-system-packages.sh system-packages.txt
