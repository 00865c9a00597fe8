"""The `edge` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from dataclasses import asdict, replace
from pathlib import Path

from pydantic import ValidationError

from convert import cli as convert_cli
from edge.cards import DEFAULT_MODELS_DIR, CardError
from edge.engine.backends import OverrideError
from edge.plan.gguf_info import GGUFInfoError
from edge.engine.llama_model import ModelLoadError
from edge.plan.memory import CACHE_TYPES
from edge.plan.fit import Machine
from edge.plan.quant_mix import QUANTS
from edge.rpc import RpcUnavailable
from edge.settings import Settings


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    # Every default is None so that unset flags fall through to EDGE_* variables, then defaults.
    flags = [
        ("--host", str, "address to bind (EDGE_HOST, default 127.0.0.1)"),
        ("--port", int, "port (EDGE_PORT, default 8000)"),
        ("--model", str, "GGUF path, model-card name or hub id (EDGE_MODEL, default: embedded SmolLM2)"),
        ("--models-dir", str, "folder of model cards and GGUFs (EDGE_MODELS_DIR, default: models/)"),
        ("--ctx-size", int, "tokens per request, prompt plus completion (EDGE_CTX_SIZE)"),
        ("--threads", int, "CPU threads (EDGE_THREADS, default: all cores)"),
        ("--n-gpu-layers", str, "layers to offload to the GPU: a number, -1 for all, or auto to place as many "
                                "as fit per `edge plan` (EDGE_N_GPU_LAYERS, default 0)"),
        ("--override-tensor", str, "PATTERN=DEVICE[,PATTERN=DEVICE...]: tensors whose name matches the regex go to "
                                   "that buffer type, e.g. 'ffn_.*_exps=CPU' (EDGE_OVERRIDE_TENSOR)"),
        ("--cache-type", str, "KV cache type: f16, q8_0 or q4_0 (EDGE_CACHE_TYPE, default f16)"),
        ("--flash-attn", str, "auto, on or off (EDGE_FLASH_ATTN, default auto)"),
        ("--load-mode", str, "auto, mmap, mlock or read (EDGE_LOAD_MODE, default auto)"),
        ("--split-mode", str, "multi-GPU split: none, layer or row (EDGE_SPLIT_MODE, default layer)"),
        ("--main-gpu", int, "GPU for the whole model with --split-mode none (EDGE_MAIN_GPU, default 0)"),
        ("--tensor-split", str, "share of the model per GPU, e.g. 3,1 (EDGE_TENSOR_SPLIT)"),
        ("--vram", float, "GB of GPU memory for --n-gpu-layers auto (EDGE_VRAM, default: what the GPU reports free)"),
        ("--parallel", int, "sequences decoded together; n=2 needs 2 (EDGE_PARALLEL, default 2)"),
        ("--max-queue", int, "requests that may wait for a slot; more get 429 (EDGE_MAX_QUEUE, default 64)"),
        ("--queue-timeout", float, "seconds a request may wait for a slot, 0: no limit (EDGE_QUEUE_TIMEOUT, default 600)"),
        ("--shutdown-timeout", float, "seconds running requests get to finish on shutdown (EDGE_SHUTDOWN_TIMEOUT, default 30)"),
        ("--api-keys", str, "comma-separated keys clients must send as Bearer tokens (EDGE_API_KEYS)"),
        ("--price", float, "USD per million tokens for usage.estimated_cost (EDGE_PRICE, default: the card's)"),
        ("--log-level", str, "debug, info, warning or error (EDGE_LOG_LEVEL, default info)"),
        ("--rpc", str, "comma-separated host:port of `edge worker`s to spread the model over (EDGE_RPC)"),
        ("--cpu-kernels", str, "CPU weight kernels: auto (the fastest that survives a probe on this machine), amx, "
                               "repack or plain (EDGE_CPU_KERNELS, default auto)"),
        ("--speculative", str, "off, ngram (draft tokens from the request's own context, for output that repeats "
                               "its input) or draft (a draft model's tokens); drafts are verified in the batch "
                               "(EDGE_SPECULATIVE, default off, or draft with --draft-model)"),
        ("--draft-model", str, "a small GGUF with the served model's vocabulary that drafts for it "
                               "(EDGE_DRAFT_MODEL; implies --speculative draft)"),
        ("--draft-max", int, "most tokens drafted per sequence per step, 1-64 (EDGE_DRAFT_MAX, default 16)"),
        ("--draft-policy", str, "auto (draft only what this machine's measured step costs say pays) or always "
                                "(EDGE_DRAFT_POLICY, default auto)"),
        ("--cache-dir", str, "where the CPU kernel probe keeps its verdicts (EDGE_CACHE_DIR, default ~/.cache/edge)"),
    ]
    for flag, kind, help_text in flags:
        parser.add_argument(flag, type=kind, default=None, help=help_text)
    parser.add_argument("--cpu-moe", action="store_true", default=None,
                        help="keep MoE expert tensors in host memory, the rest on the GPU (EDGE_CPU_MOE)")
    parser.add_argument("--no-repack", action="store_true", default=None,
                        help="keep CPU weights as stored, not repacked for AMX/AVX kernels, as llama.cpp's "
                             "--no-repack: the same as --cpu-kernels plain (EDGE_NO_REPACK)")
    parser.add_argument("--n-cpu-moe", type=int, default=None,
                        help="keep only the experts of the first N blocks in host memory (EDGE_N_CPU_MOE)")
    # Not a Settings field (settings.py ignores it): the page is an HTTP concern, not the model's.
    parser.add_argument("--no-webui", action="store_true", default=False,
                        help="do not serve the chat page at GET / (then / is a 404)")


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a GGUF path, or a model card name (sized from its hyperparameters)")
    parser.add_argument("--ctx", type=_int_list, default=None, help="context sizes, comma-separated (default 8192,32768)")
    parser.add_argument("--parallel", type=int, default=1, help="sequences sharing the KV cache (default 1)")
    parser.add_argument("--cache-type", choices=CACHE_TYPES, default="f16", help="KV cache type (default f16)")
    parser.add_argument("--no-flash-attn", action="store_true", help="plan for attention without flash attention")
    parser.add_argument("--quant", choices=QUANTS, default=None, help="one file type (card mode; default: the card's list)")
    parser.add_argument("--vram", type=float, default=None, help="GB of GPU memory (default: none)")
    parser.add_argument("--ram", type=float, default=None, help="GB of RAM (default: this machine's)")
    parser.add_argument("--unified", action="store_true", help="Apple silicon: the GPU uses --ram (--vram: its share, default 75%%)")
    parser.add_argument("--gpu-bandwidth", type=float, default=None, help="GB/s (default 1000; 400 with --unified)")
    parser.add_argument("--ram-bandwidth", type=float, default=None, help="GB/s (default 60)")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="folder of model cards")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--rpc", default=None, metavar="HOST:PORT,...",
                        help="count the free memory of these `edge worker`s as offload memory")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 16:
        raise argparse.ArgumentTypeError(f"context sizes must be at least 16, got {text!r}")
    return values


def _plan(args: argparse.Namespace) -> int:
    from edge.info import machine_ram
    from edge.plan.report import DEFAULT_CONTEXTS, format_json, format_table, layouts_for, machine_from, plan_all

    for name in ("vram", "ram", "gpu_bandwidth", "ram_bandwidth"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must not be negative")
    if args.parallel < 1:
        raise ValueError("--parallel must be at least 1")
    layouts = layouts_for(args.model, args.models_dir, args.quant)
    machine = machine_from(args.vram, args.ram, args.unified, args.gpu_bandwidth, args.ram_bandwidth, machine_ram())
    if args.rpc:
        machine = _with_workers(machine, args.rpc, quiet=args.json)
    placements = plan_all(layouts, machine, args.ctx or list(DEFAULT_CONTEXTS), args.cache_type,
                          not args.no_flash_attn, args.parallel)
    print((format_json if args.json else format_table)(layouts, placements, machine))
    return 0


def _with_workers(machine: Machine, endpoints_text: str, quiet: bool) -> Machine:
    """Remote workers' free memory joins the offload memory, as llama.cpp will use it."""
    from edge.rpc import parse_endpoints, probe_workers

    remote = probe_workers(parse_endpoints(endpoints_text))
    if not quiet:
        for endpoint, free, total in remote:
            print(f"RPC worker {endpoint}: {free / 1e9:.1f} GB free of {total / 1e9:.1f} GB, counted as offload memory")
    return replace(machine, vram=machine.vram + sum(free for _, free, _ in remote))


def _info(args: argparse.Namespace) -> int:
    from edge.cards import resolve_model
    from edge.info import as_json, collect, format_info
    from edge.plan.placement import cpu_kernels

    settings = Settings(**_given(args, ("model", "models_dir", "threads", "cpu_kernels", "no_repack", "cache_dir")))
    path, _ = resolve_model(settings.model, settings.models_dir)
    info = collect()
    kernels = cpu_kernels(settings, path)
    info["cpu_kernels"] = {"model": str(path), "line": kernels.line(), **asdict(kernels)}
    print(as_json(info) if args.json else format_info(info))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from edge.api.app import create_app
    from edge.api.shutdown import GracefulServer
    from edge.served import ServedModel

    settings = Settings(**_given(args, tuple(vars(args))))
    settings.speculative_config  # noqa: B018 - a contradictory --speculative is refused before any loading
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine_died = threading.Event()
    served = ServedModel.load(settings, on_engine_death=lambda _: engine_died.set())
    try:
        app = create_app(served, settings.api_key_list, webui=not args.no_webui)
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())
        # On SIGTERM/Ctrl-C: stop accepting, let running requests finish for shutdown_timeout seconds,
        # then close the engine, which ends the rest with 503s / error events (edge/api/shutdown.py).
        server = GracefulServer(config, settings.shutdown_timeout, served.engine.close)
        # If the engine thread dies, requests already get 503s and /health says so; the process then
        # exits (status 1) so that whatever supervises it (systemd, a container runtime) restarts it.
        threading.Thread(target=_stop_when, args=(engine_died, server), daemon=True).start()
        server.serve_until_stopped()
    finally:
        served.close()
    if engine_died.is_set():
        print("edge: the engine failed (see the log); exiting so that it can be restarted", file=sys.stderr)
        return 1
    return 0


def _stop_when(event: threading.Event, server: uvicorn.Server) -> None:  # noqa: F821
    event.wait()
    server.should_exit = True


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, object]:
    """The flags among `names` that were given: the rest fall through to EDGE_* variables, then defaults."""
    return {name: value for name, value in vars(args).items()
            if name in names and name not in ("command", "handler") and value is not None}


def _worker(args: argparse.Namespace) -> int:
    from edge.rpc import serve_worker

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"edge worker: listening on {args.host}: the RPC protocol has no authentication, "
              "run workers on a trusted network only", file=sys.stderr)
    serve_worker(args.host, args.port, args.threads, args.cache_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description="Serve GGUF models behind an OpenAI-compatible API.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model over HTTP")
    _serve_arguments(serve)
    serve.set_defaults(handler=_serve)
    worker = commands.add_parser("worker", help="lend this machine's CPU to an `edge serve --rpc` elsewhere")
    worker.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    worker.add_argument("--port", type=int, default=50052, help="port (default 50052)")
    worker.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all cores)")
    worker.add_argument("--cache-dir", type=Path, default=None,
                        help="cache tensors here so a reload does not send the weights again")
    worker.set_defaults(handler=_worker)
    convert = commands.add_parser("convert", help="convert a Hugging Face checkpoint to GGUF quants")
    convert_cli.add_arguments(convert)
    convert.set_defaults(handler=convert_cli.run)
    plan = commands.add_parser("plan", help="will a model fit this machine? weights, KV cache, placement, speed")
    _plan_arguments(plan)
    plan.set_defaults(handler=_plan)
    info = commands.add_parser("info", help="what this build can do: GPU offload, devices and free memory, RPC")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--model", default=None, help="the model whose CPU kernels to show (EDGE_MODEL, default: embedded)")
    info.add_argument("--models-dir", default=None, help="folder of model cards and GGUFs (EDGE_MODELS_DIR)")
    info.add_argument("--threads", type=int, default=None, help="CPU threads the probe uses (EDGE_THREADS, default: all)")
    info.add_argument("--cpu-kernels", default=None, help="auto, amx, repack or plain (EDGE_CPU_KERNELS, default auto)")
    info.add_argument("--no-repack", action="store_true", default=None, help="the same as --cpu-kernels plain")
    info.add_argument("--cache-dir", default=None, help="the probe's cache (EDGE_CACHE_DIR, default ~/.cache/edge)")
    info.set_defaults(handler=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValidationError as error:
        first = error.errors()[0]
        print(f"edge: {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
    except (CardError, ModelLoadError, OverrideError, GGUFInfoError, RpcUnavailable, ValueError) as error:
        print(f"edge: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
