"""llama.cpp on our GGUF tokenizes exactly as the HF tokenizer of the checkpoint."""

from __future__ import annotations

import llama_cpp
import pytest
from transformers import AutoTokenizer

BATTERY = [
    "Hello world",
    "hello, World! How are you?",
    " leading space",
    "   three leading spaces and trailing   ",
    "tabs\tand\nnewlines\n\n\nand \r\n crlf",
    "multiple     spaces     between",
    "digits 0 1 12 123 1234 12345 3.14159 1,000,000 2024-11-25",
    "unicode: Café naïve façade Größe Ελληνικά русский 日本語 中文 한국어 العربية हिन्दी",
    "emoji 🚀🦙✅ 😶‍🌫️ and symbols ©®™ ± ≤ ≥ → ∞",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) { x[i] = y[i] * 2; } // comment",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "<s> literal special tokens </s> in text",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "'s 't 're 've 'm 'll 'd I've been 'told he's there",
    "",
    " ",
    "\n",
    "a" * 200,
]


def _tokenizers(directory, gguf_path):  # noqa: ANN001, ANN202
    hf = AutoTokenizer.from_pretrained(directory)
    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    return hf, llm


@pytest.mark.parametrize("model", ["tiny-mixtral", "smollm2"])
def test_battery_matches_hf(checkpoint, converted, model):
    hf, llm = _tokenizers(checkpoint(model), converted(model, "BF16"))
    chat = hf.apply_chat_template([{"role": "user", "content": "Hi there"},
                                   {"role": "assistant", "content": "Hello! 123"},
                                   {"role": "user", "content": "More?"}], tokenize=False)
    mismatches = []
    for text in BATTERY + [chat]:
        want = hf(text).input_ids
        # add_bos=True asks for the special tokens the GGUF says to add: the flag itself is under test
        got = llm.tokenize(text.encode(), add_bos=True, special=True)
        if got != want:
            mismatches.append((text, want[:12], got[:12]))
    assert not mismatches, mismatches


@pytest.mark.parametrize("model", ["tiny-mixtral", "smollm2"])
def test_special_ids_and_template(checkpoint, converted, model):
    hf, llm = _tokenizers(checkpoint(model), converted(model, "BF16"))
    assert llm.token_bos() == hf.bos_token_id
    assert llm.token_eos() == hf.eos_token_id
    assert llm.metadata["tokenizer.chat_template"] == hf.chat_template
