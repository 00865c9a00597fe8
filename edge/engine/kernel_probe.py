"""Time one CPU kernel choice on a model, in a process of its own: a faulting kernel kills only it.

The child of edge/plan/cpu_kernels.py's probe (and of bench/cpu_kernels_bench.py):
`python -m edge.engine.kernel_probe MODEL KERNEL THREADS PROMPT_TOKENS DECODE_TOKENS` loads the model,
decodes one prompt as a batch (the path that crashes where AMX kernels fault; one-token decoding
there works), then prints `{"ready": true}`. Each line it reads then runs one round, a prompt of
PROMPT_TOKENS as one batch and DECODE_TOKENS one-token steps, and prints `{"prompt_tps", "decode_tps"}`.
The parent runs the rounds of all candidates in turn, so that a machine whose speed drifts (shared
2-core VMs drift by a third within seconds) slows every candidate alike. It ends at end of input.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import llama_cpp

from edge.engine.batch import decode_prompt, filler_tokens
from edge.engine.llama_model import LlamaModel, LoadOptions

# Test-only fault injection: the probe of the kernel named here kills itself as a faulting kernel would.
FAULT_ENV = "EDGE_TEST_PROBE_FAULT"


class KernelTimer:
    """A context on the model at `path` loaded with CPU kernels `kernel`, timing prompt and decode."""

    def __init__(self, path: Path, kernel: str, threads: int, prompt_tokens: int, decode_tokens: int) -> None:
        self.model = LlamaModel(path, LoadOptions(cpu_kernels=kernel))
        if os.environ.get(FAULT_ENV) == kernel:
            os.kill(os.getpid(), signal.SIGSEGV)
        self.prompt_tokens, self.decode_tokens = prompt_tokens, decode_tokens
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = prompt_tokens + decode_tokens
        params.n_batch = params.n_ubatch = prompt_tokens
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model.ptr, params)
        self.batch = llama_cpp.llama_batch_init(prompt_tokens, 0, 1)
        self.tokens = filler_tokens(llama_cpp.llama_vocab_n_tokens(self.model.vocab), prompt_tokens + decode_tokens)

    def round(self) -> dict[str, float]:
        """One prompt as a batch, then one-token steps; tokens/s of each."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        started = time.perf_counter()
        _check(decode_prompt(self.ctx, self.batch, self.prompt_tokens, self.tokens[:self.prompt_tokens]))
        prompt_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for position in range(self.prompt_tokens, self.prompt_tokens + self.decode_tokens):
            _check(decode_prompt(self.ctx, self.batch, self.prompt_tokens, [self.tokens[position]], start=position))
        decode_seconds = time.perf_counter() - started
        return {"prompt_tps": self.prompt_tokens / prompt_seconds, "decode_tps": self.decode_tokens / decode_seconds}

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        self.model.close()


def _check(status: int) -> None:
    if status != 0:
        raise RuntimeError(f"llama_decode failed with status {status}")


def main(argv: list[str]) -> None:
    path, kernel, *numbers = argv
    threads, prompt_tokens, decode_tokens = map(int, numbers)
    timer = KernelTimer(Path(path), kernel, threads, prompt_tokens, decode_tokens)
    timer.round()  # warm-up, and the batched decode that faulting kernels do not survive
    print(json.dumps({"ready": True}), flush=True)
    for _ in sys.stdin:
        print(json.dumps(timer.round()), flush=True)
    timer.close()


if __name__ == "__main__":
    main(sys.argv[1:])
