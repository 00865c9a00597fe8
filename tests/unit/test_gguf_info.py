"""GGUF tensor tables read without llama.cpp, including every file of a split GGUF."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from edge.plan.gguf_info import GGUFInfoError, read_layout


def _write(path: Path, names: list[str], with_header: bool) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    if with_header:
        for key, value in (("block_count", 2), ("embedding_length", 256), ("feed_forward_length", 512),
                           ("attention.head_count", 4), ("context_length", 1024)):
            writer.add_uint32(f"llama.{key}", value)
    for name in names:
        writer.add_tensor(name, np.zeros((8, 256), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_split_gguf_tensors_are_summed_over_all_files(tmp_path: Path) -> None:
    _write(tmp_path / "m-00001-of-00002.gguf", ["token_embd.weight", "blk.0.attn_q.weight"], True)
    _write(tmp_path / "m-00002-of-00002.gguf", ["blk.1.attn_q.weight", "output.weight"], False)
    layout = read_layout(tmp_path / "m-00001-of-00002.gguf")
    assert [t.name for t in layout.tensors] == ["token_embd.weight", "blk.0.attn_q.weight",
                                                "blk.1.attn_q.weight", "output.weight"]
    assert layout.weight_bytes == 4 * 8 * 256 * 2
    assert layout.hparams.n_layer == 2 and layout.hparams.head_dim == 64


def test_a_missing_split_or_a_non_gguf_is_a_clear_error(tmp_path: Path) -> None:
    _write(tmp_path / "m-00001-of-00002.gguf", ["token_embd.weight"], True)
    with pytest.raises(GGUFInfoError, match="not a readable GGUF"):
        read_layout(tmp_path / "m-00001-of-00002.gguf")
    (tmp_path / "x.gguf").write_bytes(b"not a gguf")
    with pytest.raises(GGUFInfoError):
        read_layout(tmp_path / "x.gguf")
