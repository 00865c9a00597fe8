"""Tokenizer vocabularies -> GGUF tokenizer metadata.

SentencePiece (`tokenizer.model`) is read by a small protobuf walker instead of the
sentencepiece library: the library is a compiled dependency we would pull in at run time only
to list (piece, score, type) triples, which are three fields of a simple, stable message.
BPE comes from `tokenizer.json`. Special ids, add_bos/add_eos, merges and the chat template are
read by the gguf package's SpecialVocab, the same code llama.cpp's converter uses.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
from gguf import TokenType

from .errors import ConvertError

# sentencepiece ModelProto.SentencePiece.Type -> llama.cpp token type (USER_DEFINED stays
# NORMAL, as llama.cpp's own converter does for pieces from the model file).
SPM_TYPES = {2: TokenType.UNKNOWN, 3: TokenType.CONTROL, 5: TokenType.UNUSED, 6: TokenType.BYTE}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):  # noqa: ANN202 - yields (field number, wire type, value)
    """Walk one protobuf message: varints, fixed32/64 and length-delimited fields."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, wire, val


def read_sentencepiece(path: Path) -> list[tuple[bytes, float, int]]:
    """(piece, score, token type) for every piece of a sentencepiece model file."""
    pieces = []
    try:
        for num, wire, val in _fields(path.read_bytes()):
            if num != 1 or wire != 2:  # field 1: repeated SentencePiece pieces
                continue
            piece, score, kind = b"", 0.0, 1
            for fnum, _, fval in _fields(val):
                if fnum == 1:
                    piece = bytes(fval)
                elif fnum == 2:
                    (score,) = struct.unpack("<f", fval)
                elif fnum == 3:
                    kind = fval
            pieces.append((piece, score, SPM_TYPES.get(kind, TokenType.NORMAL)))
    except (IndexError, ValueError, struct.error) as e:
        raise ConvertError(f"corrupt tokenizer.model {path}: {e}") from None
    return pieces


def looks_special(token: str) -> bool:
    """Added tokens some checkpoints forget to flag as special (same heuristic as llama.cpp)."""
    return token in ("<pad>", "<mask>") or (token.startswith("<|") and token.endswith("|>"))


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def add_sentencepiece(writer: gguf.GGUFWriter, directory: Path, vocab_size: int) -> None:
    pieces = read_sentencepiece(directory / "tokenizer.model")
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    for i, (piece, score, kind) in enumerate(pieces[:vocab_size]):
        tokens[i], scores[i], types[i] = piece, score, int(kind)
    added = {int(v): k for k, v in _json(directory / "added_tokens.json").items()}
    decoder = _json(directory / "tokenizer_config.json").get("added_tokens_decoder", {})
    for i, content in added.items():
        if i < vocab_size:
            tokens[i], scores[i], types[i] = content.encode(), -1000.0, int(TokenType.USER_DEFINED)
    for key, data in decoder.items():
        i, content = int(key), data["content"]
        if i >= vocab_size:
            continue
        special = data.get("special") or looks_special(content)
        if not special:
            content = content.replace("\u2581", " ")  # llama.cpp expects user tokens pre-normalized
        tokens[i], scores[i] = content.encode(), -1000.0
        types[i] = int(TokenType.CONTROL if special else TokenType.USER_DEFINED)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)


# Llama 3's split regex; llama.cpp calls that pre-tokenizer "llama-bpe".
LLAMA3_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


def _pre_signature(pre: dict | None) -> tuple:
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    sig = []
    for step in steps:
        kind = step.get("type")
        if kind == "Digits":
            sig.append(("Digits", bool(step.get("individual_digits"))))
        elif kind == "ByteLevel":
            sig.append(("ByteLevel", bool(step.get("use_regex", True))))
        elif kind == "Split":
            sig.append(("Split", step.get("pattern", {}).get("Regex")))
        else:
            sig.append((kind,))
    return tuple(sig)


# llama.cpp identifies BPE pre-tokenizers by hashing a tokenizer run (needs transformers at
# convert time); we recognise the tokenizer.json structure instead. --tokenizer-pre overrides.
PRE_TOKENIZERS = {
    (("Digits", True), ("ByteLevel", True)): "smollm",
    (("ByteLevel", True),): "gpt2",
    (("Split", LLAMA3_REGEX), ("ByteLevel", False)): "llama-bpe",
}


def add_bpe(writer: gguf.GGUFWriter, directory: Path, vocab_size: int, pre: str | None) -> None:
    tok = _json(directory / "tokenizer.json")
    model = tok.get("model", {})
    if model.get("type") != "BPE":
        raise ConvertError(f"tokenizer.json model type {model.get('type')!r} is not supported (BPE only)")
    if pre is None:
        pre = PRE_TOKENIZERS.get(_pre_signature(tok.get("pre_tokenizer")))
        if pre is None:
            raise ConvertError("unrecognised BPE pre-tokenizer in tokenizer.json; pass --tokenizer-pre NAME")
    reverse = {i: t for t, i in model["vocab"].items()}
    added = {a["id"]: a for a in tok.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            text, special = added[i]["content"], added[i].get("special") or looks_special(added[i]["content"])
            tokens.append(text if special else text.replace("\u2581", " "))
            types.append(int(TokenType.CONTROL if special else TokenType.USER_DEFINED))
        elif i in reverse:
            tokens.append(reverse[i])
            types.append(int(TokenType.NORMAL))
        else:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)


def add_vocab(writer: gguf.GGUFWriter, directory: Path, config: dict, fallback_template: str | None,
              tokenizer_pre: str | None = None) -> None:
    """Vocabulary, special tokens and chat template. SentencePiece wins when both files exist,
    as in llama.cpp: tokenizer.model is the model's own definition for Llama/Mistral."""
    vocab_size = config["vocab_size"]
    is_bpe = not (directory / "tokenizer.model").is_file()
    if is_bpe and not (directory / "tokenizer.json").is_file():
        raise ConvertError(f"no tokenizer.model or tokenizer.json in {directory}")
    tok_config = _json(directory / "tokenizer_config.json")
    if (prefix := tok_config.get("add_prefix_space")) is not None:
        writer.add_add_space_prefix(bool(prefix))
    if is_bpe:
        add_bpe(writer, directory, vocab_size, tokenizer_pre)
    else:
        add_sentencepiece(writer, directory, vocab_size)
    special = gguf.SpecialVocab(directory, load_merges=is_bpe, n_vocab=vocab_size)
    if is_bpe:
        # No template post-processor in tokenizer.json means the HF tokenizer adds no BOS;
        # say so explicitly, since llama.cpp's default for BPE vocabularies is to add one.
        special.add_special_token.setdefault("bos", bool(tok_config.get("add_bos_token", False)))
    if special.chat_template is None and fallback_template:
        special.chat_template = fallback_template.strip()
    special.add_to_gguf(writer, quiet=True)
