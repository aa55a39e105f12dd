# Two set-up commands on a fresh machine: `make demo` and `make test` (each installs what it needs).
VENV ?= .venv
MODALITY ?= minflux
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(VENV)/bin/streamer compile --missing-ok  # native model libraries, once per machine (see README)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/streamer demo --modality $(MODALITY)

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q
