# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs capsgen, trains a capsule GAN for a few minutes on bundled digits, writes samples, curves + report
#   make test   creates/updates .venv, installs Fashion-MNIST and Chromium (Debian packages) if missing, runs the tests
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
FMNIST  := /usr/share/datasets/fashion-mnist

.PHONY: venv demo test test-slow fashion-mnist chromium bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 is pinned in pyproject: pip takes the CPU build from this machine's disk.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The Debian package is the data source for Fashion-MNIST; install it only when missing.
fashion-mnist:
	@if [ ! -e $(FMNIST)/train-images-idx3-ubyte.gz ] && [ ! -e $(FMNIST)/train-images-idx3-ubyte ]; then \
		echo "installing dataset-fashion-mnist (Debian package)"; \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null || \
		echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; \
	fi

# The explorer's browser test drives Debian's Chromium through Debian's chromedriver (nothing
# downloads a browser build); install both only when missing.
chromium:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		echo "installing chromium and chromium-driver (Debian packages)"; \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null || \
		echo "warning: could not install chromium/chromium-driver; the explorer's browser test will be skipped"; \
	fi

demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/capsgen demo --out runs/demo

# The default suite (under ~10 minutes on 2 cores); tests that spawn processes (signals, torchrun)
# or train for more than a few seconds are marked slow and run by test-slow. CI runs both.
test: $(STAMP) fashion-mnist chromium
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

test-slow: $(STAMP) fashion-mnist chromium
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/capsnet_step.py
	$(BIN)/python benchmarks/gan_step.py
	$(BIN)/python benchmarks/ddp_throughput.py
	$(BIN)/python benchmarks/explore_latency.py

clean:
	rm -rf $(VENV) runs *.egg-info
