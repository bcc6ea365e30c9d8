"""Adapter-only checkpoints: the trainable weights as safetensors, plus a JSON config that says how to
rebuild the model (method, options, head) and which backbone it belongs to."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tinyattn.model import EncoderClassifier, backbone_identity

FORMAT = "tinyattn-adapter/1"
WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"


class BackboneMismatchError(ValueError):
    """An adapter was loaded into a backbone other than the one it was trained on."""


def trainable_state(model: EncoderClassifier) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad
    }


def save_adapter(
    model: EncoderClassifier, directory: str | Path, extra: dict | None = None
) -> Path:
    """Write the trainable weights and the config that rebuilds the model around them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "method": model.method,
        "options": model.method_options,
        "num_labels": model.num_labels,
        "head_dropout": model.dropout.p,
        "backbone": getattr(model, "backbone_identity", None)
        or backbone_identity(model.base_encoder),
        **(extra or {}),
    }
    if hasattr(
        model, "tiny_attention"
    ):  # the deployed state may differ from the options (averaged)
        config["options"] = {**config["options"], **model.tiny_attention.config.to_dict()}
    save_file(trainable_state(model), str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def read_adapter_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no adapter config at {path}")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint (format={config.get('format')!r})")
    return config


def check_backbone(saved: dict, encoder) -> None:
    """Raise ``BackboneMismatchError`` unless ``encoder`` is the backbone the adapter was saved for."""
    actual = backbone_identity(encoder)
    differing = [k for k in saved if k != "name" and saved[k] != actual.get(k)]
    if differing:
        detail = ", ".join(f"{k}: saved {saved[k]!r} vs given {actual.get(k)!r}" for k in differing)
        raise BackboneMismatchError(
            f"adapter was saved for backbone {saved.get('name')!r} but is being loaded into "
            f"{actual.get('name')!r}; they differ in {detail}"
        )


def load_adapter(directory: str | Path, backbone=None) -> EncoderClassifier:
    """Rebuild the model around a saved adapter. ``backbone``: a name, path or encoder; default: the saved one."""
    from tinyattn.methods import build_model

    directory = Path(directory)
    config = read_adapter_config(directory)
    from tinyattn.model import load_encoder

    if backbone is None or isinstance(backbone, str):
        encoder = load_encoder(backbone or config["backbone"]["name"])
    else:
        encoder = backbone
    check_backbone(config["backbone"], encoder)
    options = {k: v for k, v in config["options"].items() if k != "init_from"}
    model = build_model(
        config["method"],
        encoder,
        config["num_labels"],
        options,
        head_dropout=config["head_dropout"],
    )
    load_trainable_state(model, load_file(str(directory / WEIGHTS_FILE)), source=directory)
    return model


def load_trainable_state(model: EncoderClassifier, state: dict, source="state") -> None:
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"{source}: weights do not fit this model; missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            if params[name].shape != tensor.shape:
                raise ValueError(
                    f"{source}: {name} has shape {tuple(tensor.shape)}, "
                    f"the model expects {tuple(params[name].shape)}"
                )
            params[name].copy_(tensor)


def init_experts_from_checkpoint(
    model: EncoderClassifier, directory, *, noise_std: float = 1e-6, seed: int = 0
) -> None:
    """Stage two of the authors' recipe: E experts from a trained single-expert adapter (+ its head)."""
    from tinyattn.adapter import TinyAttention

    config = read_adapter_config(directory)
    options = config["options"]
    if config["method"] != "tinyattn" or options.get("experts", 1) != 1:
        raise ValueError(f"{directory}: init_from needs a single-expert tinyattn adapter")
    check_backbone(config["backbone"], model.base_encoder)
    state = load_file(str(Path(directory) / WEIGHTS_FILE))
    adapters = model.tiny_attention
    singles = []
    for i, layer in enumerate(adapters.layers):
        single = TinyAttention(
            layer.hidden_size,
            head_dim=options["head_dim"],
            experts=1,
            dropout=options["dropout"],
            combine=options["combine"],
            context=options["context"],
        )
        prefix = f"tiny_attention.layers.{i}."
        layer_state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        single.load_state_dict(layer_state)
        singles.append(single)
    generator = torch.Generator().manual_seed(seed)
    adapters.load_experts_from(singles, noise_std=noise_std, generator=generator)
    with torch.no_grad():
        model.head.weight.copy_(state["head.weight"])
        model.head.bias.copy_(state["head.bias"])
