"""HF safetensors -> GGUF conversion (streaming, resumable) and llama.cpp quantization."""

# llama.cpp's libraries are loaded before anything else on purpose. Measured on a CUDA build (H200,
# CUDA 13): once sentencepiece or tokenizers (which `gguf` imports) had loaded their own native
# libraries first, llama_model_load_from_file crashed the process with SIGSEGV; with llama_cpp
# imported first every load worked. tests/unit/test_import_order.py keeps the order.
import llama_cpp  # noqa: F401,E402
