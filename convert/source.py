"""Where the checkpoint comes from: a local directory or a Hugging Face hub id.

Only the files conversion needs are downloaded; the shard index is checked against the
directory before any work starts, so a missing shard fails in a second, not after an hour.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import ConvertError
from .safetensors import TensorRef, read_header

# What a conversion reads; everything else in a repo (pytorch .bin, consolidated.*, images) is skipped.
HUB_PATTERNS = [
    "config.json", "generation_config.json", "tokenizer.model", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "model.safetensors.index.json", "*.safetensors",
]
INDEX = "model.safetensors.index.json"


@dataclass
class Checkpoint:
    """A resolved checkpoint: its directory, config and lazily readable tensors."""

    path: Path
    hub_id: str | None
    config: dict
    tensors: dict[str, TensorRef]

    @property
    def name(self) -> str:
        """Base name for outputs and general.name: the repo name or directory name."""
        return self.hub_id.rsplit("/", 1)[-1] if self.hub_id else self.path.resolve().name


def resolve(model: str, revision: str | None = None) -> tuple[Path, str | None]:
    """Return (local directory, hub id or None). A path that exists wins over a hub id."""
    if Path(model).is_dir():
        return Path(model), None
    if model.count("/") != 1 or model.startswith((".", "/")):
        raise ConvertError(f"{model!r} is neither a directory nor a hub id of the form org/name")
    return _download(model, revision), model


def _download(repo_id: str, revision: str | None) -> Path:
    # Imported here so local conversions never touch the hub client.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        # snapshot_download honours HF_HUB_OFFLINE itself (cache only) and shows tqdm bars.
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError:
        raise ConvertError(f"{repo_id} is not in the local Hugging Face cache and the hub is unreachable or offline") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise ConvertError(f"download of {repo_id} failed: {first}") from None


def load(model: str, revision: str | None = None) -> Checkpoint:
    """Resolve the source and read config plus every shard header (headers only)."""
    path, hub_id = resolve(model, revision)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ConvertError(f"no config.json in {path}")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    return Checkpoint(path, hub_id, config, _read_tensors(path))


def _read_tensors(path: Path) -> dict[str, TensorRef]:
    index_path = path / INDEX
    if index_path.is_file():
        weight_map: dict[str, str] = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise ConvertError(f"missing shard {missing[0]} (listed in {INDEX}; {len(missing)} of {len(shards)} missing)")
    else:
        shards = sorted(p.name for p in path.glob("*.safetensors"))
        weight_map = {}
        if not shards:
            raise ConvertError(f"no *.safetensors files in {path}")
    tensors: dict[str, TensorRef] = {}
    for shard in shards:
        tensors.update(read_header(path / shard))
    absent = [n for n in weight_map if n not in tensors]
    if absent:
        raise ConvertError(f"tensor {absent[0]} is listed in {INDEX} but not found in its shard")
    return tensors


def card_template(models_dir: Path, hub_id: str | None, name: str) -> str | None:
    """The chat template of the model card matching this checkpoint, if any.

    Cards are matched by hub id, or by repo name when converting a local copy
    (e.g. a directory called WizardLM-2-8x22B).
    """
    if not models_dir.is_dir():
        return None
    for card_path in sorted(models_dir.glob("*.toml")):
        with open(card_path, "rb") as f:
            card = tomllib.load(f)
        card_hub = str(card.get("hub_id", ""))
        matches = (hub_id is not None and card_hub.lower() == hub_id.lower()) or (
            card_hub.rsplit("/", 1)[-1].lower() == name.lower()
        )
        if matches and card.get("chat_template"):
            return str(card["chat_template"])
    return None
