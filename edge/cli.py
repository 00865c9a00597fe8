"""The `edge` command."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from edge.cards import CardError
from edge.engine.llama_model import ModelLoadError
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
        ("--n-gpu-layers", int, "layers to offload to the GPU, -1 for all (EDGE_N_GPU_LAYERS, default 0)"),
        ("--parallel", int, "sequences decoded together; n=2 needs 2 (EDGE_PARALLEL, default 2)"),
        ("--max-queue", int, "requests that may wait for a slot; more get 429 (EDGE_MAX_QUEUE, default 64)"),
        ("--queue-timeout", float, "seconds a request may wait for a slot, 0: no limit (EDGE_QUEUE_TIMEOUT, default 600)"),
        ("--shutdown-timeout", float, "seconds running requests get to finish on shutdown (EDGE_SHUTDOWN_TIMEOUT, default 30)"),
        ("--api-keys", str, "comma-separated keys clients must send as Bearer tokens (EDGE_API_KEYS)"),
        ("--price", float, "USD per million tokens for usage.estimated_cost (EDGE_PRICE, default: the card's)"),
        ("--log-level", str, "debug, info, warning or error (EDGE_LOG_LEVEL, default info)"),
    ]
    for flag, kind, help_text in flags:
        parser.add_argument(flag, type=kind, default=None, help=help_text)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from edge.api.app import create_app
    from edge.served import ServedModel

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "handler") and v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    served = ServedModel.load(settings)
    try:
        app = create_app(served, settings.api_key_list)
        # On SIGTERM/Ctrl-C uvicorn stops accepting, lets running requests finish for up to
        # shutdown_timeout seconds, then cancels the rest; closing the engine fails what still waits.
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                    timeout_graceful_shutdown=settings.shutdown_timeout)
    finally:
        served.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description="Serve GGUF models behind an OpenAI-compatible API.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model over HTTP")
    _serve_arguments(serve)
    serve.set_defaults(handler=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValidationError as error:
        first = error.errors()[0]
        print(f"edge: {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
    except (CardError, ModelLoadError, ValueError) as error:
        print(f"edge: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
