"""Load a GGUF with llama.cpp in this process and report what it allocated, as JSON on stdout.

Run as a script by the accuracy tests, so that RSS belongs to this load alone. The weights are read
(not mapped) so that every byte is resident, and one full batch is decoded so the compute buffer is
touched.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import llama_cpp

from edge.engine.llama_model import LlamaModel, LoadOptions

_SIZE = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size =\s+([\d.]+) MiB")


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _fill(context: object, token: int, ctx: int, ubatch: int, lines: list[str]) -> None:
    """Decode `ctx` tokens in full batches, every one with logits: every KV cell and the whole
    compute buffer get written, so all of them are resident when RSS is read."""
    batch = llama_cpp.llama_batch_init(ubatch, 0, 1)
    for start in range(0, ctx, ubatch):
        count = min(ubatch, ctx - start)
        batch.n_tokens = count
        for i in range(count):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, start + i, 1, True
            batch.seq_id[i][0] = 0
        status = llama_cpp.llama_decode(context, batch)
        if status != 0:
            sys.exit(f"llama_decode failed ({status}): " + " | ".join(lines[-5:]))
    llama_cpp.llama_batch_free(batch)


def main(path: str, ctx: int, parallel: int, ubatch: int) -> None:
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("edge.llama")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    llama_cpp.llama_backend_init()
    before = _rss()
    model = LlamaModel(Path(path), LoadOptions(load_mode="read"))
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = ctx, ubatch, ubatch
    params.n_seq_max, params.kv_unified, params.n_threads, params.n_threads_batch = parallel, True, 2, 2
    context = llama_cpp.llama_init_from_model(model.ptr, params)
    _fill(context, model.bos_id, ctx, ubatch, lines)
    sizes: dict[str, float] = {}
    for line in lines:
        match = _SIZE.search(line)
        if match:
            sizes[match.group(2)] = sizes.get(match.group(2), 0.0) + float(match.group(3)) * 2**20
    print(json.dumps({"rss_delta": _rss() - before, **sizes}))
    llama_cpp.llama_free(context)
    model.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
