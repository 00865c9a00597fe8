"""edge: serve quantized GGUF models behind an OpenAI-compatible API."""

import os

# ggml's OpenMP threads wait for each other at every graph node, and libgomp spins 300,000 times
# before it sleeps. While other processes want the CPUs too (a build, a second server), a spinning
# thread holds its core while the thread it waits for is not running, and every node waits a whole
# scheduler slice. Measured on a 2-core AMD EPYC, SmolLM2 Q4_1, one sequence, one busy-loop process
# per core: 68-146 ms per token at the default or at 100,000; 21-27 ms at 5,000-20,000; 10-13 ms on
# an idle machine at every count. libgomp reads this once, when it loads, so it is set before
# llama_cpp is imported; a value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

# llama.cpp's libraries are loaded before anything else on purpose. Measured on a CUDA build (H200,
# CUDA 13): once sentencepiece or tokenizers (which `gguf` imports) had loaded their own native
# libraries first, llama_model_load_from_file crashed the process with SIGSEGV; with llama_cpp
# imported first every load worked. tests/unit/test_import_order.py keeps the order.
import llama_cpp  # noqa: F401,E402

__version__ = "0.1.0"
