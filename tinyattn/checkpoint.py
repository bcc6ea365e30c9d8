"""Adapter-only checkpoints: the trainable weights as safetensors, plus a JSON config that says how to
rebuild the model (method, options, head) and which backbone it belongs to; and the two-stage start of
a tiny-attention model's experts from its one-expert twin's checkpoint (``start_experts_from``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tinyattn.adapter import TinyAttention
from tinyattn.inject import PREFIX
from tinyattn.methods import RETIRED_OPTIONS, build_model
from tinyattn.model import EncoderClassifier, backbone_identity, load_encoder

FORMAT = "tinyattn-adapter/1"
WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"
#: The authors' two-stage recipe: std of the Gaussian noise that makes the E copies of the trained
#: single expert differ (on their q/k/v Linear only).
EXPERT_NOISE_STD = 1e-6


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
    adapters = getattr(model, PREFIX, None)
    if adapters is not None:  # the deployed state may differ from the options (averaged)
        config["options"] = {**config["options"], **adapters.config.to_dict()}
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


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The saved tensors of an adapter folder; a missing or damaged file is an error naming it."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no adapter weights at {path}")
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise ValueError(
            f"cannot read the adapter weights {path} (damaged or incomplete: {err})"
        ) from err


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
    directory = Path(directory)
    config = read_adapter_config(directory)
    if backbone is None or isinstance(backbone, str):
        encoder = load_encoder(backbone or config["backbone"]["name"])
    else:
        encoder = backbone
    check_backbone(config["backbone"], encoder)
    retired = RETIRED_OPTIONS.get(config["method"], {})  # older adapters still name them
    options = {k: v for k, v in config["options"].items() if k not in retired}
    model = build_model(
        config["method"],
        encoder,
        config["num_labels"],
        options,
        head_dropout=config["head_dropout"],
    )
    load_trainable_state(model, read_weights(directory), source=directory)
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


def start_experts_from(
    model: EncoderClassifier,
    twin: str | Path | dict,
    *,
    noise_std: float = EXPERT_NOISE_STD,
    seed: int = 0,
) -> EncoderClassifier:
    """Stage two of the authors' recipe, in place: every layer's E experts start as copies of the
    trained single expert plus N(0, noise_std^2) noise on their q/k/v Linear; the head is the twin's.

    Starting every expert from one trained solution keeps them in one basin, which is what makes the
    element-wise average of their weights a good deployed model. ``twin``: the folder of the one-expert
    twin's saved adapter, or its trainable weights (``trainable_state``). The noise comes from its own
    generator seeded with ``seed``.
    """
    adapters = getattr(model, PREFIX, None)
    if adapters is None:
        raise ValueError("start_experts_from: the model has no tiny-attention adapters")
    state = twin if isinstance(twin, dict) else _twin_weights(model, Path(twin))
    # The twin's layers, then every layer's E copies, are built as modules; their (overwritten)
    # initialisation draws from torch's global generator, on which a run's later dropout masks depend:
    # the same draws in the same order keep every recorded two-stage run reproducible.
    singles = [_twin_layer(state, i, layer) for i, layer in enumerate(adapters.layers)]
    generator = torch.Generator().manual_seed(seed)
    for layer, single in zip(adapters.layers, singles):
        copies = TinyAttention(
            single.hidden_size,
            head_dim=single.head_dim,
            experts=adapters.config.experts,
            dropout=single.dropout,
            combine=adapters.config.combine,
            context=single.context,
        ).to(device=single.qkv_weight.device, dtype=single.qkv_weight.dtype)
        with torch.no_grad():
            for name, param in copies.named_parameters():
                param.copy_(getattr(single, name).expand_as(param))
            for param in (copies.qkv_weight, copies.qkv_bias):
                noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
                param.add_(noise.to(param.device) * noise_std)
            for name, param in layer.named_parameters():
                param.copy_(getattr(copies, name))
    with torch.no_grad():
        model.head.weight.copy_(state["head.weight"])
        model.head.bias.copy_(state["head.bias"])
    return model


def _twin_weights(model: EncoderClassifier, folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a saved one-expert tinyattn adapter for ``model``'s backbone and adapters."""
    config = read_adapter_config(folder)
    options = config["options"]
    if config["method"] != "tinyattn" or options.get("experts", 1) != 1:
        raise ValueError(f"{folder}: the experts can start only from a one-expert tinyattn adapter")
    ours = getattr(model, PREFIX).config.to_dict()
    differing = [k for k in ("head_dim", "placement", "context") if options.get(k) != ours[k]]
    if differing:
        raise ValueError(f"{folder}: its adapter differs from the model's in {differing}")
    check_backbone(config["backbone"], model.base_encoder)
    return read_weights(folder)


def _twin_layer(state: dict, index: int, like: TinyAttention) -> TinyAttention:
    """Layer ``index`` of the twin's weights as a one-expert module with ``like``'s options."""
    single = TinyAttention(
        like.hidden_size,
        head_dim=like.head_dim,
        dropout=like.dropout,
        combine=like.combine,
        context=like.context,
    )
    prefix = f"{PREFIX}.layers.{index}."
    single.load_state_dict(
        {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    )
    return single
