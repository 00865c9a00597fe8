"""The CLI as a user runs it (subprocess): errors are one line, runs resume, splits load."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from .llama_utils import gguf_logits

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
    return subprocess.run([sys.executable, "-m", "convert", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kw)


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def linked_copy(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    """A checkpoint directory of symlinks to src's files (so tests can break one file cheaply)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            (dst / f.name).symlink_to(f)
    return dst


def replace_file(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def test_corrupt_header(checkpoint, tmp_path):
    d = linked_copy(checkpoint("tiny-mixtral"), tmp_path / "m")
    shard = d / "model-00002-of-00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:40] = b"\x00garbage not json at all......."
    replace_file(shard, bytes(data))
    assert_one_line_error(cli(str(d), "-q", "BF16", "-o", str(tmp_path / "out")), "corrupt safetensors header")


def test_truncated_shard(checkpoint, tmp_path):
    d = linked_copy(checkpoint("tiny-mixtral"), tmp_path / "m")
    shard = d / "model-00001-of-00003.safetensors"
    replace_file(shard, shard.read_bytes()[:-1000])
    assert_one_line_error(cli(str(d), "-q", "BF16", "-o", str(tmp_path / "out")), "lies outside the file")


def test_missing_shard(checkpoint, tmp_path):
    d = linked_copy(checkpoint("tiny-mixtral"), tmp_path / "m", skip=("model-00003-of-00003.safetensors",))
    assert_one_line_error(cli(str(d), "-q", "BF16", "-o", str(tmp_path / "out")),
                          "missing shard model-00003-of-00003.safetensors")


def test_unknown_architecture(checkpoint, tmp_path):
    d = linked_copy(checkpoint("tiny-llama"), tmp_path / "m", skip=("config.json",))
    config = json.loads((checkpoint("tiny-llama") / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(config))
    assert_one_line_error(cli(str(d), "-q", "BF16", "-o", str(tmp_path / "out")),
                          "unknown architecture GPT2LMHeadModel")


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], int]]) -> None:
    """A safetensors file whose data is sparse (zeros): name -> (dtype, shape, itemsize)."""
    header, offset = {}, 0
    for name, (dtype, shape, itemsize) in tensors.items():
        n = int(np.prod(shape)) * itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)


def test_unsupported_dtype(checkpoint, tmp_path):
    d = linked_copy(checkpoint("tiny-llama"), tmp_path / "m", skip=("model.safetensors",))
    write_safetensors(d / "model.safetensors", {"model.norm.weight": ("F64", (256,), 8)})
    assert_one_line_error(cli(str(d), "-q", "BF16", "-o", str(tmp_path / "out")), "unsupported dtype F64")


def test_not_enough_disk(checkpoint, tmp_path):
    """A (sparse) checkpoint claiming a 4 TB embedding: refused before anything is written."""
    d = linked_copy(checkpoint("tiny-llama"), tmp_path / "m", skip=("model.safetensors",))
    write_safetensors(d / "model.safetensors", {"model.embed_tokens.weight": ("BF16", (49152, 40_000_000), 2)})
    out = tmp_path / "out"
    assert_one_line_error(cli(str(d), "-q", "BF16", "-o", str(out)), "not enough disk space")
    assert not any(out.iterdir())


def test_unknown_quant_type(checkpoint, tmp_path):
    assert_one_line_error(cli(str(checkpoint("tiny-llama")), "-q", "Q3_X_Z", "-o", str(tmp_path)),
                          "unknown quant type")


def test_kill_and_rerun_resumes(checkpoint, converted, tmp_path):
    """SIGKILL mid-write leaves only a .part; the re-run finishes and matches a clean run byte for byte."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "convert", str(checkpoint("smollm2")), "-q", "F32", "-o", str(out)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = out / "smollm2-135m-F32.gguf.part"
    deadline = time.monotonic() + 60
    while not (part.is_file() and part.stat().st_size > 50_000_000) and time.monotonic() < deadline:
        time.sleep(0.001)  # a fast disk writes the rest in well under 100 ms
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    final = out / "smollm2-135m-F32.gguf"
    assert part.is_file() and not final.exists(), "the kill should have landed mid-write"
    rerun = cli(str(checkpoint("smollm2")), "-q", "F32", "-o", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert final.is_file() and not part.exists()
    assert final.read_bytes() == converted("smollm2", "F32").read_bytes()


def test_rerun_skips_complete_outputs(checkpoint, tmp_path):
    out = tmp_path / "out"
    first = cli(str(checkpoint("tiny-mixtral")), "-q", "Q4_K_M", "-o", str(out))
    assert first.returncode == 0, first.stderr
    q4 = out / "tiny-mixtral-Q4_K_M.gguf"
    assert q4.is_file() and not (out / "tiny-mixtral-BF16.gguf").exists()  # intermediate deleted
    mtime = q4.stat().st_mtime_ns
    again = cli(str(checkpoint("tiny-mixtral")), "-q", "Q4_K_M", "-o", str(out))
    assert again.returncode == 0 and "complete, skipped" in again.stderr
    assert q4.stat().st_mtime_ns == mtime


def test_split_output_loads(checkpoint, converted, tmp_path):
    out = tmp_path / "out"
    proc = cli(str(checkpoint("tiny-mixtral")), "-q", "BF16,Q4_K_M", "--split-max-size", "15M", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    bf16 = sorted(out.glob("tiny-mixtral-BF16-*-of-*.gguf"))
    q4 = sorted(out.glob("tiny-mixtral-Q4_K_M-*-of-*.gguf"))
    assert len(bf16) >= 3 and len(q4) == len(bf16), [p.name for p in out.iterdir()]
    assert not list(out.glob("*.part*"))
    ids = list(range(1, 40))
    assert np.array_equal(gguf_logits(bf16[0], ids), gguf_logits(converted("tiny-mixtral", "BF16"), ids))
    assert np.array_equal(gguf_logits(q4[0], ids), gguf_logits(converted("tiny-mixtral", "Q4_K_M"), ids))


def fake_hub_cache(cache: Path, repo: str, files: Path) -> None:
    """The layout huggingface_hub leaves after a download: refs/main -> snapshots/<commit>/."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(files, root / "snapshots" / commit, symlinks=True)


def test_hub_id_offline_from_cache(checkpoint, tmp_path):
    fake_hub_cache(tmp_path / "hub", "edge-test/tiny-llama", checkpoint("tiny-llama"))
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    proc = cli("edge-test/tiny-llama", "-q", "BF16", "-o", str(tmp_path / "out"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "tiny-llama-BF16.gguf").is_file()
    missing = cli("edge-test/not-there", "-q", "BF16", "-o", str(tmp_path / "out"), env=env)
    assert_one_line_error(missing, "not in the local Hugging Face cache")


def test_card_template_when_checkpoint_has_none(checkpoint, tmp_path):
    """A local WizardLM-2-8x22B directory without a template gets the card's Vicuna template."""
    import tomllib

    src = checkpoint("tiny-mixtral")
    d = linked_copy(src, tmp_path / "WizardLM-2-8x22B", skip=("chat_template.jinja", "tokenizer_config.json"))
    tok_config = json.loads((src / "tokenizer_config.json").read_text())
    tok_config.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(tok_config))
    proc = cli(str(d), "-q", "BF16", "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    reader = gguf.GGUFReader(tmp_path / "out" / "WizardLM-2-8x22B-BF16.gguf")
    card = tomllib.loads((REPO / "models" / "wizardlm-2-8x22b.toml").read_text())
    assert reader.fields["tokenizer.chat_template"].contents() == card["chat_template"].strip()
    assert reader.fields["general.name"].contents() == "WizardLM-2-8x22B"


@pytest.mark.parametrize("size,expected", [("15M", 15_000_000), ("50G", 50_000_000_000), ("1234", 1234)])
def test_parse_size(size, expected):
    from convert.cli import parse_size

    assert parse_size(size) == expected


def write_imatrix(path: Path, model: Path) -> None:
    """A GGUF imatrix (llama-imatrix's layout) of uniform importance for every matrix of model."""
    w = gguf.GGUFWriter(path, "imatrix")
    for t in gguf.GGUFReader(model).tensors:
        if len(t.shape) < 2:
            continue
        n_mat = int(t.shape[2]) if len(t.shape) > 2 else 1  # one row per expert
        w.add_tensor(f"{t.name}.in_sum2", np.full((n_mat, int(t.shape[0])), 3.0, dtype=np.float32))
        w.add_tensor(f"{t.name}.counts", np.full((n_mat, 1), 3.0, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_imatrix_enables_very_low_bit_quant(checkpoint, converted, tmp_path):
    """IQ2_XXS refuses to run without an importance matrix and succeeds with ours."""
    model = checkpoint("tiny-mixtral")
    without = cli(str(model), "-q", "IQ2_XXS", "-o", str(tmp_path / "a"))
    # llama.cpp logs its own lines while quantizing; ours is the last one
    assert without.returncode != 0 and "Traceback" not in without.stderr
    assert "quantization to IQ2_XXS failed" in without.stderr.strip().splitlines()[-1]
    write_imatrix(tmp_path / "imatrix.gguf", converted("tiny-mixtral", "BF16"))
    proc = cli(str(model), "-q", "IQ2_XXS", "--imatrix", str(tmp_path / "imatrix.gguf"), "-o", str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    types = {t.tensor_type for t in gguf.GGUFReader(tmp_path / "b" / "tiny-mixtral-IQ2_XXS.gguf").tensors}
    assert gguf.GGMLQuantizationType.IQ2_XXS in types
