"""--draft-model: a draft model must have the served model's vocabulary, id for id; else `edge serve`
refuses to start, with one line that says why (its drafts are token ids: another vocabulary's ids
would mean other text). The drafting itself is tested in tests/api/test_speculative.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import pytest
from support import EMBEDDED_GGUF, free_port

from convert.gguf_edit import copy_gguf
from convert.synthetic import SyntheticShape, write_synthetic


def serve_exit(draft_model: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edge.cli", "serve", "--port", str(free_port()), "--threads", "2",
               "--cpu-kernels", "plain", "--draft-model", str(draft_model)]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def test_a_draft_model_with_another_number_of_tokens_is_refused_at_start(tmp_path: Path) -> None:
    other = write_synthetic(tmp_path / "synthetic.gguf", gguf.LlamaFileType.MOSTLY_F16,
                            SyntheticShape(layers=1, hidden=256, ffn=256, heads=4, kv_heads=2))
    result = serve_exit(other)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"edge: the draft model synthetic.gguf has 1024 tokens and {EMBEDDED_GGUF.name} 49152: "
        "a draft model must have the served model's vocabulary")


def test_a_draft_model_whose_tokens_differ_is_refused_at_start(tmp_path: Path) -> None:
    tokens = gguf.GGUFReader(EMBEDDED_GGUF).fields["tokenizer.ggml.tokens"].contents()
    original, tokens[1000] = tokens[1000], "zzzz"
    other = copy_gguf(EMBEDDED_GGUF, tmp_path / "renamed-token.gguf", {"tokenizer.ggml.tokens": tokens})
    result = serve_exit(other)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"edge: the draft model renamed-token.gguf does not share {EMBEDDED_GGUF.name}'s vocabulary: "
        f"token 1000 is 'zzzz' there and {original!r} here")


@pytest.mark.parametrize(("args", "message"), [
    (["--speculative", "draft"], "edge: --speculative draft needs --draft-model PATH"),
    (["--speculative", "ngram", "--draft-model", "small.gguf"], "edge: --draft-model drafts with --speculative draft, not ngram"),
    (["--draft-model", "missing.gguf"], "edge: draft model file not found: missing.gguf"),
])
def test_contradictory_or_missing_draft_settings_stop_the_server_with_one_line(args: list[str], message: str) -> None:
    command = [sys.executable, "-m", "edge.cli", "serve", "--port", str(free_port()), "--cpu-kernels", "plain", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == message
