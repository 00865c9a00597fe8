"""Placement: everything that decides where a model's tensors go and which kernels read them.

gguf_info (a GGUF's tensor table), quant_mix (the types llama.cpp's quantizer picks), memory
(sizes of weights, KV cache, compute buffers), fit (GPU layers and experts on a machine), report
(`edge plan`), placement (serve settings -> load options), cpu_kernels (which CPU weight kernels,
chosen by a probe) and llama_build with isa_flags (which compiled llama.cpp, chosen at install).
"""
