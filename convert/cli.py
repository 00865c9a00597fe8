"""`edge convert` / `python -m convert`: flags in, one line out on failure."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from .errors import ConvertError
from .pipeline import Options, run as run_pipeline

SIZE_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def parse_size(text: str) -> int:
    """'50G', '500M', '2000000' -> bytes (decimal units, as llama.cpp's gguf-split uses)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (examples: 500M, 50G)")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Hugging Face hub id (org/name) or a local checkpoint directory")
    parser.add_argument("-q", "--quant", default="Q4_K_M",
                        help="output type(s), comma-separated: BF16, F16, F32, Q8_0 (written directly) "
                             "or any llama.cpp type (Q2_K ... Q6_K, IQ4_XS, ...) (default: Q4_K_M)")
    parser.add_argument("-o", "--out", type=Path, default=Path("models"), help="output directory (default: models)")
    parser.add_argument("--revision", help="hub revision: branch, tag or commit (default: main)")
    parser.add_argument("--split-max-size", type=parse_size, default=0, metavar="SIZE",
                        help="split outputs above SIZE (e.g. 50G) into NAME-0000i-of-0000N.gguf")
    parser.add_argument("--keep-bf16", action="store_true",
                        help="keep the bf16 intermediate used for llama.cpp quant types")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="quantization threads")
    parser.add_argument("--imatrix", type=Path, help="importance matrix (GGUF, from llama-imatrix) for quantization")
    parser.add_argument("--name", help="output base name (default: the repo or directory name)")
    parser.add_argument("--tokenizer-pre", help="llama.cpp BPE pre-tokenizer name, if not recognised")
    parser.add_argument("--cards", type=Path, default=Options.cards,
                        help="model-card directory for chat templates the checkpoint lacks")


def run(args: argparse.Namespace) -> int:
    opts = Options(model=args.model, quants=args.quant.split(","), out=args.out, revision=args.revision,
                   split_max_size=args.split_max_size, keep_bf16=args.keep_bf16, threads=args.threads,
                   imatrix=args.imatrix, cards=args.cards, tokenizer_pre=args.tokenizer_pre, name=args.name)
    try:
        for path in run_pipeline(opts):
            print(path)
    except ConvertError as e:
        print(f"edge convert: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edge convert: interrupted; re-run to resume", file=sys.stderr)
        return 130
    except Exception as e:  # anything else is still reported as one line; EDGE_DEBUG shows the traceback
        if os.environ.get("EDGE_DEBUG"):
            raise
        print(f"edge convert: error: {e.__class__.__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge convert", description="Convert a Hugging Face checkpoint to GGUF")
    add_arguments(parser)
    return run(parser.parse_args(argv))
