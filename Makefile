# Set-up and the main commands. `make demo` and `make test` work on a fresh Debian machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION := /usr/share/datasets/fashion-mnist
DEMO_WORKDIR ?= runs/dcgan_fashion_mnist

.PHONY: venv demo test test-slow lint fashion-mnist clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

# The demo's data: the Debian package of Fashion-MNIST when it can be installed (else TFDS).
fashion-mnist:
	@if [ ! -d $(FASHION) ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
	      || echo "could not install dataset-fashion-mnist; the demo will try TFDS"; \
	  else echo "$(FASHION) missing (apt-get install dataset-fashion-mnist); the demo will try TFDS"; fi; \
	fi

demo: venv fashion-mnist
	$(PY) train.py --config gans_jax/configs/dcgan_fashion_mnist.py --workdir $(DEMO_WORKDIR)
	@echo "samples: $(DEMO_WORKDIR)/samples_final.png  summary: $(DEMO_WORKDIR)/summary.json"

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
