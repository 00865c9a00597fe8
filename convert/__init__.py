"""HF safetensors -> GGUF conversion (streaming, resumable) and llama.cpp quantization."""
