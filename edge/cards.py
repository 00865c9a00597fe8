"""Model cards: `models/*.toml`, one per model we know how to serve or convert."""

from __future__ import annotations

import importlib.util
import tomllib
from dataclasses import dataclass
from pathlib import Path

# The repository's models/ folder: cards live there and converted GGUFs land there.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
EMBEDDED_MODEL = "smollm2-135m-instruct"


class CardError(ValueError):
    """A card is malformed, or a model name matches no card and no file."""


@dataclass(frozen=True)
class ModelCard:
    name: str
    hub_id: str
    gguf: str
    context_length: int
    price_per_mtoken: float = 0.0
    chat_template: str | None = None
    package: str | None = None  # the GGUF ships inside this installed Python package
    # Architecture numbers (`edge plan` sizes the model from them without the GGUF): n_layer, n_embd,
    # n_head, n_head_kv, head_dim, n_ff, n_vocab, n_expert, n_expert_used.
    hyperparameters: dict | None = None
    quants: tuple[str, ...] = ()  # the file types `edge plan` compares for this card

    def gguf_path(self, models_dir: Path) -> Path:
        if self.package is None:
            return models_dir / self.gguf
        spec = importlib.util.find_spec(self.package)  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise CardError(f"model {self.name}: package {self.package} is not installed (run `make install`)")
        return Path(spec.submodule_search_locations[0]) / self.gguf


def load_cards(models_dir: Path) -> dict[str, ModelCard]:
    """Every card in `models_dir`, by name."""
    cards = {}
    for path in sorted(models_dir.glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text())
            if "quants" in data:
                data["quants"] = tuple(data["quants"])
            card = ModelCard(**data)
        except (tomllib.TOMLDecodeError, TypeError) as error:
            raise CardError(f"{path}: not a valid model card ({error})") from error
        cards[card.name] = card
    return cards


def find_card(spec: str, cards: dict[str, ModelCard]) -> ModelCard | None:
    """The card named `spec` by its name or its hub id, if any."""
    return next((card for card in cards.values() if spec in (card.name, card.hub_id)), None)


def load_cards_if_any(models_dir: Path) -> dict[str, ModelCard]:
    """`load_cards`, or no cards when the folder does not exist."""
    return load_cards(models_dir) if models_dir.is_dir() else {}


def resolve_model(spec: str | None, models_dir: Path) -> tuple[Path, ModelCard | None]:
    """The GGUF to load for `spec` (a card name, hub id, or a path), and its card if it has one."""
    cards = load_cards_if_any(models_dir)
    spec = spec or EMBEDDED_MODEL
    card = find_card(spec, cards)
    if card is not None:
        path = card.gguf_path(models_dir)
        if not path.is_file():
            raise CardError(f"model {card.name}: {path} does not exist yet; create it with "
                            f"`make convert MODEL={card.hub_id} QUANT=<type>` (see README)")
        return path, card
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" or path.exists():
        card = next((c for c in cards.values() if c.package is None and c.gguf == path.name), None)
        return path, card
    known = ", ".join(sorted(cards)) or "none"
    raise CardError(f"unknown model {spec!r}: not a GGUF path and no card of that name (cards: {known})")
