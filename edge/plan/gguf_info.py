"""What a GGUF holds, read from its header and tensor table only (no llama.cpp load, no weights read).

The tensor table gives every tensor's name, shape and ggml type, so its bytes are exact; the
hyperparameters give the KV cache and compute-buffer sizes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import gguf

_LAYER = re.compile(r"^blk\.(\d+)\.")
# Merged expert tensors of a MoE layer (Mixtral, WizardLM-2): what --cpu-moe keeps in host memory.
EXPERT_PATTERN = r"\.ffn_(up|down|gate)_exps"


@dataclass(frozen=True)
class Hyperparameters:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int  # per expert for a MoE model
    n_vocab: int
    n_ctx_train: int
    n_expert: int = 0
    n_expert_used: int = 0
    tokenizer: str = "llama"  # tokenizer.ggml.model: llama (SentencePiece), gpt2 (BPE), ...

    @property
    def n_gqa(self) -> int:
        return self.n_head // max(1, self.n_head_kv)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    type: str  # ggml type name: F32, Q4_K, ...

    @property
    def elements(self) -> int:
        count = 1
        for dim in self.ne:
            count *= dim
        return count

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[self.type]]
        return self.elements // block * size

    @property
    def layer(self) -> int | None:
        """The block this tensor belongs to; None for token_embd, output and output_norm."""
        match = _LAYER.match(self.name)
        return int(match.group(1)) if match else None

    @property
    def is_expert(self) -> bool:
        return re.search(EXPERT_PATTERN, self.name) is not None


@dataclass(frozen=True)
class ModelLayout:
    """Hyperparameters plus every tensor: what a memory plan needs."""

    name: str
    hparams: Hyperparameters
    tensors: tuple[TensorInfo, ...]
    file_type: str

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


class GGUFInfoError(ValueError):
    """The file is not a GGUF we can plan for."""


def _field(reader: gguf.GGUFReader, key: str, default: object = None) -> object:
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise GGUFInfoError(f"the GGUF has no {key}")
        return default
    return field.contents()


_SPLIT = re.compile(r"^(.*)-00001-of-(\d{5})\.gguf$")


def _split_files(path: Path) -> list[Path]:
    """All files of a split GGUF when `path` is its first (name-00001-of-0000N.gguf), else [path]."""
    match = _SPLIT.match(path.name)
    if not match:
        return [path]
    count = int(match.group(2))
    return [path.with_name(f"{match.group(1)}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def _reader(path: Path) -> gguf.GGUFReader:
    try:
        return gguf.GGUFReader(path)
    except (OSError, ValueError) as error:
        raise GGUFInfoError(f"{path}: not a readable GGUF ({error})") from error


def read_layout(path: Path) -> ModelLayout:
    """The layout of the GGUF at `path` (every file of a split GGUF), from headers only."""
    reader = _reader(path)
    arch = str(_field(reader, "general.architecture"))
    n_embd = int(_field(reader, f"{arch}.embedding_length"))
    n_head = int(_field(reader, f"{arch}.attention.head_count"))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    n_vocab = int(_field(reader, f"{arch}.vocab_size", len(tokens.data) if tokens else 0))
    hparams = Hyperparameters(
        n_layer=int(_field(reader, f"{arch}.block_count")),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(_field(reader, f"{arch}.attention.head_count_kv", n_head)),
        head_dim=int(_field(reader, f"{arch}.attention.key_length", n_embd // n_head)),
        n_ff=int(_field(reader, f"{arch}.feed_forward_length")),
        n_vocab=n_vocab,
        n_ctx_train=int(_field(reader, f"{arch}.context_length")),
        n_expert=int(_field(reader, f"{arch}.expert_count", 0)),
        n_expert_used=int(_field(reader, f"{arch}.expert_used_count", 0)),
        tokenizer=str(_field(reader, "tokenizer.ggml.model", "llama")),
    )
    readers = [reader] + [_reader(part) for part in _split_files(path)[1:]]
    tensors = tuple(
        TensorInfo(t.name, tuple(int(d) for d in t.shape), t.tensor_type.name) for r in readers for t in r.tensors
    )
    file_type = _field(reader, "general.file_type", -1)
    try:
        type_name = gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
    except ValueError:
        type_name = str(file_type)
    return ModelLayout(str(_field(reader, "general.name", path.stem)), hparams, tensors, type_name)


@dataclass(frozen=True)
class WeightTypes:
    """What the CPU kernel choice reads of a model: its file type, experts and each tensor's type."""

    file_type: int  # llama.cpp's file type (general.file_type); -1 when the file does not say
    experts: int
    tensors: tuple[tuple[str, str], ...]  # (name, type as gguf-py spells it: Q4_K, Q8_0, F32 ...)
    path: Path | None = None  # the file these were read from (its first part, when split)
    file_bytes: int = 0  # of every part

    def type_of(self, name: str) -> str | None:
        return next((kind for tensor, kind in self.tensors if tensor == name), None)


def weight_types(path: Path) -> WeightTypes:
    """The types of every tensor of the GGUF at `path` (every file of a split GGUF), read by llama.cpp's
    own header parser: milliseconds, where read_layout's full parse takes seconds on a 49k vocabulary."""
    from edge.engine.backends import gguf_header

    try:
        values, tensors = gguf_header(str(path), ("general.architecture", "general.file_type"))
        architecture = values.get("general.architecture", "llama")
        experts, _ = gguf_header(str(path), (f"{architecture}.expert_count",))
        parts = _split_files(path)
        for part in parts[1:]:
            tensors += gguf_header(str(part), ())[1]
    except ValueError as error:
        raise GGUFInfoError(str(error)) from error
    return WeightTypes(int(values.get("general.file_type", -1)), int(experts.get(f"{architecture}.expert_count", 0)),
                       tuple((name, kind.upper()) for name, kind in tensors), path,
                       sum(part.stat().st_size for part in parts))
