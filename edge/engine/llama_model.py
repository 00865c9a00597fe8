"""A loaded GGUF model: weights, vocabulary and metadata, through llama.cpp's C API.

Read-only once loaded, so request threads may tokenize while the engine thread decodes.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp

from edge.engine import backends
from edge.engine.backends import TensorOverrides
from edge.plan.gguf_info import EXPERT_PATTERN

log = logging.getLogger("edge.llama")

# ggml log levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line.
_GGML_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}


@llama_cpp.llama_log_callback
def _forward_llama_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    # llama.cpp prints hundreds of load lines to stderr; route them through logging instead.
    log.log(_GGML_LEVELS.get(level, logging.DEBUG), text.decode("utf-8", "replace").rstrip())


def route_llama_log() -> None:
    """Send llama.cpp's and ggml's log lines to the `edge.llama` logger from now on."""
    llama_cpp.llama_log_set(_forward_llama_log, None)


class ModelLoadError(RuntimeError):
    """The GGUF file is missing or llama.cpp refused to load it."""


LOAD_MODES = {
    "auto": llama_cpp.LLAMA_LOAD_MODE_AUTO,
    "mmap": llama_cpp.LLAMA_LOAD_MODE_MMAP,
    "mlock": llama_cpp.LLAMA_LOAD_MODE_MMAP_MLOCK,  # mapped, and locked so it cannot be swapped out
    "read": llama_cpp.LLAMA_LOAD_MODE_NONE,  # read into allocated memory
}
SPLIT_MODES = {"none": llama_cpp.LLAMA_SPLIT_MODE_NONE, "layer": llama_cpp.LLAMA_SPLIT_MODE_LAYER,
               "row": llama_cpp.LLAMA_SPLIT_MODE_ROW}


@dataclass(frozen=True)
class LoadOptions:
    """Where weights go and how they are read; the defaults are llama.cpp's own."""

    n_gpu_layers: int = 0
    cpu_moe: bool = False  # keep MoE expert tensors in host memory
    overrides: tuple[tuple[str, str], ...] = ()  # (tensor-name regex, buffer type name)
    load_mode: str = "auto"
    # CPU weight kernels (backends.CPU_KERNELS). "plain" needs no probe to be safe: llama.cpp's default
    # ("amx") crashes on some AMX machines, so `edge serve` decides by probe (edge/plan/cpu_kernels.py).
    cpu_kernels: str = "plain"
    split_mode: str = "layer"
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = field(default=())
    vocab_only: bool = False  # metadata and tokenizer only: no weights are read
    devices: tuple[int, ...] = ()  # ggml_backend_dev_t handles to offload to; () lets llama.cpp choose

    def override_rules(self) -> list[tuple[str, str]]:
        return [*self.overrides, *([(EXPERT_PATTERN, "CPU")] if self.cpu_moe else [])]


class LlamaModel:
    """Owns a `llama_model*`; tokenizes, detokenizes and reads GGUF metadata."""

    def __init__(self, path: Path, options: LoadOptions = LoadOptions()) -> None:
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        route_llama_log()
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        # The arrays are read by llama.cpp during the load only, but are kept with the model anyway.
        self._load_arrays = self._apply(params, options)
        self.path = path
        self.options = options
        # The first file of a split GGUF (name-00001-of-0000N.gguf) makes llama.cpp load the rest.
        self.ptr = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise ModelLoadError(f"llama.cpp could not load {path} (see the log above)")
        self.vocab = llama_cpp.llama_model_get_vocab(self.ptr)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self.vocab)
        # A vocabulary-only load leaves the hyperparameters at 0: read the GGUF key instead.
        architecture = self.metadata("general.architecture") or "llama"
        self.n_ctx_train: int = llama_cpp.llama_model_n_ctx_train(self.ptr) or int(
            self.metadata(f"{architecture}.context_length") or 0)
        self.bos_id: int = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos_id: int = llama_cpp.llama_vocab_eos(self.vocab)
        self.add_bos: bool = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))

    @staticmethod
    def _apply(params: llama_cpp.llama_model_params, options: LoadOptions) -> tuple[object, ...]:
        params.n_gpu_layers = options.n_gpu_layers
        params.vocab_only = options.vocab_only
        devices = None
        if options.devices:
            # NULL-terminated. Passed explicitly because llama.cpp's default device choice did not
            # pick up RPC devices registered through ctypes (measured: every layer stayed on CPU).
            devices = (ctypes.c_void_p * (len(options.devices) + 1))(*options.devices, None)
            params.devices = ctypes.cast(devices, ctypes.c_void_p)
        params.load_mode = LOAD_MODES[options.load_mode]
        params.use_extra_bufts = options.cpu_kernels != "plain"
        if params.use_extra_bufts:
            backends.restrict_extra_buffer_types(backends.kernel_buffer_types(options.cpu_kernels))
        params.split_mode = SPLIT_MODES[options.split_mode]
        params.main_gpu = options.main_gpu
        rules = options.override_rules()
        overrides = TensorOverrides(rules) if rules else None
        if overrides is not None:
            params.tensor_buft_overrides = overrides.pointer
        split = None
        if options.tensor_split:
            # llama.cpp reads llama_max_devices() floats.
            split = (ctypes.c_float * llama_cpp.llama_max_devices())(*options.tensor_split)
            params.tensor_split = split
        return overrides, split, devices

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Tokens of `text`; special-token text (e.g. `<|im_start|>`) maps to its single token."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buffer = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(self.vocab, data, len(data), buffer, capacity, add_special, True)
        if count < 0:  # the buffer was too small: -count is the size needed
            capacity = -count
            buffer = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(self.vocab, data, len(data), buffer, capacity, add_special, True)
        return list(buffer[:count])

    def piece(self, token: int) -> bytes:
        """The bytes `token` contributes to generated text; control tokens contribute none."""
        buffer = ctypes.create_string_buffer(64)
        size = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, 64, 0, False)
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, -size, 0, False)
        return buffer.raw[:size]

    def token_text(self, token: int) -> str:
        """The vocabulary's text for `token` (`</s>`, `<|im_end|>`), as templates spell it."""
        if token < 0:
            return ""
        return llama_cpp.llama_vocab_get_text(self.vocab, token).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as text, or None when the file lacks `key`."""
        size = llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), None, 0)
        if size < 0:
            return None
        buffer = ctypes.create_string_buffer(size + 1)
        llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), buffer, size + 1)
        return buffer.value.decode("utf-8", "replace")
