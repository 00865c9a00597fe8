"""`edge plan`: which quant and context fit this machine, where the layers and experts go, how fast."""

from __future__ import annotations

import json
from pathlib import Path

from edge.cards import CardError, find_card, load_cards_if_any
from edge.plan.gguf_info import GGUFInfoError, Hyperparameters, ModelLayout, read_layout
from edge.plan.memory import split_weights
from edge.plan.fit import GIB, Machine, Placement, Workload, place
from edge.plan.quant_mix import QUANTS, quantized_layout

GB = 1e9
DEFAULT_CONTEXTS = (8192, 32768)


def card_layouts(spec: str, models_dir: Path, quant: str | None) -> list[ModelLayout]:
    """Layouts computed from a card's hyperparameters, one per quant (the card's list, or `quant`)."""
    card = find_card(spec, load_cards_if_any(models_dir))
    if card is None:
        raise CardError(f"unknown model {spec!r}: not a GGUF file and no card of that name")
    if not card.hyperparameters:
        raise CardError(f"card {card.name} has no [hyperparameters]: give the GGUF path instead")
    try:
        h = Hyperparameters(n_ctx_train=card.context_length, **card.hyperparameters)
    except TypeError as error:
        raise CardError(f"card {card.name}: bad [hyperparameters] ({error})") from error
    quants = [quant] if quant else list(card.quants or QUANTS)
    return [quantized_layout(h, q, card.name) for q in quants]


def layouts_for(spec: str, models_dir: Path, quant: str | None = None) -> list[ModelLayout]:
    """A GGUF's own layout when `spec` is a file (or a card whose GGUF is present), else the card's."""
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" or path.is_file():
        if not path.is_file():
            raise GGUFInfoError(f"no such GGUF file: {path}")
        return [read_layout(path)]
    card = find_card(spec, load_cards_if_any(models_dir))
    if card is not None and quant is None and card.package is None and (models_dir / card.gguf).is_file():
        return [read_layout(models_dir / card.gguf)]
    if card is not None and card.package is not None and not card.hyperparameters and quant is None:
        return [read_layout(card.gguf_path(models_dir))]
    return card_layouts(spec, models_dir, quant)


def plan_all(layouts: list[ModelLayout], machine: Machine, contexts: list[int], cache_type: str,
             flash_attn: bool = True, parallel: int = 1) -> list[Placement]:
    return [place(layout, machine, Workload(ctx * parallel, cache_type, flash_attn), parallel)
            for layout in layouts for ctx in contexts]


def _gb(value: float) -> str:
    return f"{value / GB:.1f}"


def _machine_line(machine: Machine) -> str:
    if not machine.vram:
        gpu = "no GPU"
    elif machine.unified:
        gpu = f"unified memory, {_gb(machine.vram)} GB usable by the GPU at {_gb(machine.gpu_bandwidth)} GB/s"
    else:
        gpu = f"GPU {_gb(machine.vram)} GB at {_gb(machine.gpu_bandwidth)} GB/s"
    ram = f"RAM {_gb(machine.ram)} GB at {_gb(machine.ram_bandwidth)} GB/s" if machine.ram else "RAM unknown"
    return f"machine: {gpu}; {ram}"


def format_table(layouts: list[ModelLayout], placements: list[Placement], machine: Machine) -> str:
    """A readable table, one row per quant and context, after a per-layer summary per quant."""
    lines = [_machine_line(machine), ""]
    for layout in layouts:
        split = split_weights(layout)
        layer = max(split.layers, key=lambda x: x.total)
        h = layout.hparams
        lines.append(
            f"{layout.name} {layout.file_type}: {h.n_layer} layers, weights {_gb(split.total)} GB "
            f"({8 * split.total / sum(t.elements for t in layout.tensors):.2f} bits/weight); largest layer "
            f"{layer.total / 1e6:.0f} MB ({layer.experts / 1e6:.0f} MB experts, {layer.dense / 1e6:.0f} MB rest); "
            f"embeddings {split.token_embd / 1e6:.0f} MB, output {split.output / 1e6:.0f} MB"
        )
    header = ("quant", "ctx", "cache", "weights", "KV", "compute", "placement", "GPU layers", "experts",
              "GPU GB", "RAM GB", "fits", "tok/s <=")
    rows = [header] + [
        (p.quant, str(p.ctx), p.cache_type, _gb(p.weights), _gb(p.kv_cache), _gb(p.compute),
         p.strategy, str(p.n_gpu_layers), p.experts, _gb(p.gpu_bytes), _gb(p.host_bytes), "yes" if p.fits else "no",
         f"{p.tokens_per_s:.1f}")
        for p in placements
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    table = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    table.insert(1, "  ".join("-" * width for width in widths))
    notes = ["", "GB are 10^9 bytes. GPU layers: as --n-gpu-layers counts (layers + 1 = all, output head included).",
             "tok/s <= is a memory-bandwidth bound for one sequence at that context; real decoding is slower."]
    return "\n".join(lines + [""] + table + notes)


def format_json(layouts: list[ModelLayout], placements: list[Placement], machine: Machine) -> str:
    document = {
        "machine": {"vram": machine.vram, "ram": machine.ram, "unified": machine.unified,
                    "gpu_bandwidth": machine.gpu_bandwidth, "ram_bandwidth": machine.ram_bandwidth},
        "models": [{"name": layout.name, "quant": layout.file_type, "weights": layout.weight_bytes,
                    "hyperparameters": vars(layout.hparams)} for layout in layouts],
        "plans": [p.as_dict() for p in placements],
    }
    return json.dumps(document, indent=2)


def machine_from(vram_gb: float | None, ram_gb: float | None, unified: bool, gpu_bw: float | None,
                 ram_bw: float | None, detected_ram: int) -> Machine:
    """The machine to plan for: flags in GB (10^9), defaulting to no GPU and this machine's RAM."""
    ram = ram_gb * GB if ram_gb is not None else float(detected_ram)
    if unified:
        # macOS lets the GPU wire about three quarters of unified memory by default.
        vram = vram_gb * GB if vram_gb is not None else 0.75 * ram
        bandwidth = gpu_bw * GB if gpu_bw is not None else 400e9
        return Machine(vram=vram, ram=ram, unified=True, gpu_bandwidth=bandwidth,
                       ram_bandwidth=bandwidth, gpu_margin=1.0 * GIB)
    defaults = Machine()
    return Machine(vram=(vram_gb or 0) * GB, ram=ram,
                   gpu_bandwidth=gpu_bw * GB if gpu_bw else defaults.gpu_bandwidth,
                   ram_bandwidth=ram_bw * GB if ram_bw else defaults.ram_bandwidth)
