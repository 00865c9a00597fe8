"""Benchmark: our converter vs llama.cpp's convert_hf_to_gguf.py, both to bf16, same inputs.

Inputs: SmolLM2-135M (real weights, the test fixture) and a synthetic ~2 GB Mixtral (random
bf16, Mistral v1 tokenizer), built once into ~/.cache/edge-bench. llama.cpp's script comes from
the llama-cpp-python 0.3.36 sdist, downloaded and extracted into that cache (never into the
repo) and run from a temporary directory. Peak RSS is the child's own ru_maxrss (os.wait4).
Writes bench/reports/convert.md. Not a test: `make bench-convert`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.conversion import fixtures  # noqa: E402

CACHE = Path.home() / ".cache" / "edge-bench"
SDIST = "llama_cpp_python-0.3.36"


def llama_cpp_script() -> Path:
    script = CACHE / SDIST / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    if not script.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "llama-cpp-python==0.3.36", "--no-deps",
                        "--no-binary", ":all:", "-d", str(CACHE)], check=True)
        with tarfile.open(CACHE / f"{SDIST}.tar.gz") as tar:
            tar.extractall(CACHE, filter="data")
    return script


def synthetic_mixtral() -> Path:
    """~2 GB MixtralForCausalLM: hidden 1024, 8 experts of 3584, 11 layers, 4 shards."""
    out = CACHE / "synthetic-mixtral-2g"
    if out.is_dir():
        return out
    tmp = Path(tempfile.mkdtemp(dir=CACHE))
    h, ff, layers, experts, vocab, kv = 1024, 3584, 11, 8, 32000, 256
    config = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": h,
              "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": 8,
              "num_key_value_heads": 2, "num_local_experts": experts, "num_experts_per_tok": 2,
              "vocab_size": vocab, "rope_theta": 1e6, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2}
    (tmp / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 24, dtype=np.float32) * 0.02).view(np.uint32) >> 16

    def rand(*shape: int) -> np.ndarray:
        n = int(np.prod(shape))
        start = int(rng.integers(0, pool.size))
        return np.resize(np.roll(pool, -start), n).astype(np.uint16).reshape(shape)

    shards: list[dict[str, np.ndarray]] = [{"model.embed_tokens.weight": rand(vocab, h)}]
    for b in range(layers):
        if b % 3 == 0:
            shards.append({})
        p = f"model.layers.{b}."
        t = shards[-1]
        t[p + "input_layernorm.weight"] = rand(h)
        t[p + "post_attention_layernorm.weight"] = rand(h)
        t[p + "self_attn.q_proj.weight"], t[p + "self_attn.o_proj.weight"] = rand(h, h), rand(h, h)
        t[p + "self_attn.k_proj.weight"], t[p + "self_attn.v_proj.weight"] = rand(kv, h), rand(kv, h)
        t[p + "block_sparse_moe.gate.weight"] = rand(experts, h)
        for x in range(experts):
            e = f"{p}block_sparse_moe.experts.{x}."
            t[e + "w1.weight"], t[e + "w3.weight"], t[e + "w2.weight"] = rand(ff, h), rand(ff, h), rand(h, ff)
    shards[-1]["model.norm.weight"], shards[-1]["lm_head.weight"] = rand(h), rand(vocab, h)
    _save_shards(tmp, shards)
    fixtures.mistral_v1_tokenizer(tmp)
    os.replace(tmp, out)
    return out


def _save_shards(directory: Path, shards: list[dict[str, np.ndarray]]) -> None:
    """Write safetensors ourselves: safetensors.numpy has no bf16 dtype (data is raw uint16)."""
    weight_map = {}
    for i, tensors in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {}, 0
        for key, arr in tensors.items():
            header[key] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
            offset += arr.nbytes
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(directory / name, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            for arr in tensors.values():
                f.write(arr.tobytes())
        weight_map.update({k: name for k in tensors})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one child process.

    Peak RSS is VmHWM from /proc, polled: ru_maxrss of a child is unreliable here because Linux
    carries the parent's high-water mark across fork+exec (the bench itself may be large).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_kb = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError):
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
    return wall, peak_kb / 1024


def same_tensors(a: Path, b: Path) -> tuple[int, int]:
    """(tensors with identical type, shape and bytes, total tensors)."""
    import gguf

    theirs = {t.name: t for t in gguf.GGUFReader(b).tensors}
    ours = gguf.GGUFReader(a).tensors
    same = sum(1 for t in ours if t.name in theirs and t.tensor_type == theirs[t.name].tensor_type
               and np.array_equal(np.asarray(t.data), np.asarray(theirs[t.name].data)))
    return same, max(len(ours), len(theirs))


def bench(label: str, model: Path, script: Path) -> dict:
    size = sum(f.stat().st_size for f in model.glob("*.safetensors"))
    subprocess.run(["cat", *map(str, model.glob("*.safetensors"))], stdout=subprocess.DEVNULL, check=True)  # warm cache
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        work = Path(tmp)
        ours = timed([sys.executable, "-m", "convert", str(model), "-q", "BF16", "-o", str(work / "ours")], REPO)
        theirs = timed([sys.executable, str(script), str(model), "--outtype", "bf16",
                        "--outfile", str(work / "theirs.gguf")], work)
        same = same_tensors(next((work / "ours").glob("*.gguf")), work / "theirs.gguf")
    return {"label": label, "mb": size / 1e6, "ours": ours, "theirs": theirs, "same": same}


def report(rows: list[dict]) -> str:
    lines = ["| input | size | tool | wall s | MB/s | peak RSS MB |", "|---|---|---|---|---|---|"]
    for r in rows:
        for tool in ("ours", "theirs"):
            wall, rss = r[tool]
            name = "edge convert" if tool == "ours" else "convert_hf_to_gguf.py"
            lines.append(f"| {r['label']} | {r['mb']:.0f} MB | {name} | {wall:.2f} | {r['mb'] / wall:.0f} | {rss:.0f} |")
    lines.append("")
    for r in rows:
        speed, mem = r["theirs"][0] / r["ours"][0], r["ours"][1] / r["theirs"][1]
        lines.append(f"- {r['label']}: {speed:.1f}x faster, {mem:.2f}x the peak RSS; "
                     f"{r['same'][0]}/{r['same'][1]} tensors byte-identical to llama.cpp's output")
    return "\n".join(lines)


def main() -> None:
    script = llama_cpp_script()
    rows = [bench("SmolLM2-135M", fixtures.smollm2(), script),
            bench("synthetic Mixtral", synthetic_mixtral(), script)]
    table = report(rows)
    print(table)
    out = REPO / "bench" / "reports" / "convert.md"
    text = out.read_text() if out.is_file() else ""
    marker = "<!-- bench-convert results -->"
    head = text.split(marker)[0] if marker in text else text
    out.write_text(f"{head.rstrip()}\n\n{marker}\n{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores\n\n{table}\n")


if __name__ == "__main__":
    main()
