"""Placing tiny-attention adapters in Hugging Face encoders, without editing the library's source.

Each adapter is attached to one self-attention sub-layer by a forward hook:

- ``after_attention`` (the authors' code name ``m0``, their default): the adapter reads the output of the
  self-attention sub-layer (after its LayerNorm) and its update is added there; the FFN then runs as usual.
- ``parallel_attention``: the adapter reads the layer's input and its update is added to the output of the
  self-attention sub-layer, in parallel with it.

The adapters live in one module, ``TinyAttentionAdapters``, stored on the classifier as the attribute
named ``PREFIX``, the prefix of their parameters' names that freezing, saving and loading key on. The
encoder's padding mask is captured by a pre-hook on the encoder's forward so the adapters attend only to
real tokens. The functions here take an ``EncoderClassifier`` but import nothing from ``tinyattn.model``,
which imports ``PREFIX`` to recognise tiny-attention modules placed inside an encoder (``tinyattn.peft``).

ALBERT shares one layer's weights across its depth; its one shared attention sub-layer gets one shared
adapter, as in the authors' code.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from tinyattn.adapter import TinyAttention, check_options, param_count
from tinyattn.fastpath import FastTinyAttention

PLACEMENTS = ("after_attention", "parallel_attention")
SUPPORTED_ARCHITECTURES = ("bert", "roberta", "albert")
PREFIX = "tiny_attention"  # the classifier's attribute holding the adapters; their names' prefix


@dataclass
class TinyAttnConfig:
    """Everything that defines the tiny-attention adapters of one model."""

    head_dim: int = 1
    experts: int = 1
    dropout: float = 0.1
    placement: str = "after_attention"
    combine: str = "mean"
    context: str = "full"
    out_scale: float = 0.01

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {self.placement!r}; choose one of {PLACEMENTS}")
        check_options("TinyAttnConfig", **option_values(self))

    @classmethod
    def from_dict(cls, data: dict) -> TinyAttnConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown tiny-attention options {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def option_values(config) -> dict:
    """The module options of a configuration (``TinyAttnConfig`` or PEFT's ``TinyAttentionConfig``)."""
    names = ("head_dim", "experts", "dropout", "combine", "context")
    return {name: getattr(config, name) for name in names}


def new_adapter(hidden_size: int, config) -> TinyAttention:
    """A freshly initialised adapter with the options of ``config`` (a ``TinyAttnConfig``, or the PEFT
    route's ``TinyAttentionConfig``: any object with the same option fields): ``TinyAttention``
    computed through its fast forms (``fastpath.FastTinyAttention``), the one chosen at install."""
    return FastTinyAttention(
        hidden_size,
        head_dim=config.head_dim,
        experts=config.experts,
        dropout=config.dropout,
        combine=config.combine,
        context=config.context,
        out_scale=config.out_scale,
    )


def attention_sublayers(encoder: nn.Module) -> list[nn.Module]:
    """The distinct self-attention sub-layers of a BERT, RoBERTa or ALBERT encoder, bottom to top."""
    model_type = getattr(getattr(encoder, "config", None), "model_type", type(encoder).__name__)
    if model_type in ("bert", "roberta"):
        return [layer.attention for layer in encoder.encoder.layer]
    if model_type == "albert":
        return [
            layer.attention
            for group in encoder.encoder.albert_layer_groups
            for layer in group.albert_layers
        ]
    raise NotImplementedError(
        f"tiny-attention adapters support the architectures {SUPPORTED_ARCHITECTURES}; "
        f"this encoder is {model_type!r} ({type(encoder).__name__})"
    )


class TinyAttentionAdapters(nn.Module):
    """One ``TinyAttention`` per distinct self-attention sub-layer of an encoder, attached by hooks."""

    def __init__(self, encoder: nn.Module, config: TinyAttnConfig) -> None:
        super().__init__()
        self.config = config
        sublayers = attention_sublayers(encoder)
        hidden = encoder.config.hidden_size
        self.layers = nn.ModuleList(new_adapter(hidden, config) for _ in sublayers)
        self._padding_mask: torch.Tensor | None = None
        self._handles = [encoder.register_forward_pre_hook(self._capture_mask, with_kwargs=True)]
        for index, sublayer in enumerate(sublayers):
            # Bound methods, not closures: ``copy.deepcopy(model)`` rebinds a bound method to the copy's
            # adapters, whereas a closure would keep calling the original's.
            hook = functools.partial(self._add_update, index)
            self._handles.append(sublayer.register_forward_hook(hook, with_kwargs=True))

    def _capture_mask(self, module, args, kwargs):
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if mask is None or mask.dim() != 2:
            mask = None
        elif not mask.is_cuda and bool(mask.all()):
            # No padding in the batch: attending without a mask is the same function and takes a faster
            # kernel, as the backbone's own attention does. (On a GPU the check would wait for it.)
            mask = None
        self._padding_mask = mask

    def _add_update(self, index: int, module, args, kwargs, output):
        attended = output[0] if isinstance(output, tuple) else output  # (B, T, D)
        if self.config.placement == "after_attention":
            source = attended
        else:
            source = args[0] if args else kwargs["hidden_states"]  # the layer's input
        # the sub-layer's output is replaced by the result: the adapter may write it there
        updated = self.layers[index](
            source, self._padding_mask, residual=attended, reuse_residual=True
        )
        return (updated, *output[1:]) if isinstance(output, tuple) else updated

    def detach_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -------------------------------------------------------------- experts
    def average_experts(self) -> TinyAttentionAdapters:
        """Deploy: replace every layer's experts by their element-wise weight average (in place)."""
        for i, layer in enumerate(self.layers):
            self.layers[i] = layer.average_experts()
        self.config.experts = 1
        return self


def add_tiny_attention(
    model: nn.Module, config: TinyAttnConfig | None = None, **options
) -> TinyAttentionAdapters:
    """Freeze the encoder of ``model`` (a ``model.EncoderClassifier``), attach tiny-attention adapters,
    and keep the backbone in eval mode in training.

    Trainable afterwards: the adapters and the classification head, nothing else.
    """
    if hasattr(model, PREFIX):
        raise ValueError("this model already has tiny-attention adapters")
    config = config or TinyAttnConfig.from_dict(options)
    for param in model.encoder.parameters():
        param.requires_grad_(False)
    adapters = TinyAttentionAdapters(model.base_encoder, config)
    adapters.to(device=model.head.weight.device, dtype=model.head.weight.dtype)
    setattr(model, PREFIX, adapters)  # registered as a submodule: parameters, state_dict, train()
    model.backbone_dropout = False
    return adapters


def average_experts(model: nn.Module) -> nn.Module:
    """Deploy a model's tiny-attention experts as their weight average (in place); returns the model."""
    getattr(model, PREFIX).average_experts()
    return model


@contextmanager
def layers_installed(model: nn.Module, layers: list[TinyAttention]):
    """Temporarily run ``model`` with ``layers`` (one module per adapter slot) as its adapters."""
    adapters = getattr(model, PREFIX)
    saved, experts = list(adapters.layers), adapters.config.experts
    if len(layers) != len(saved):
        raise ValueError(f"{len(layers)} layers for {len(saved)} adapter slots")
    for i, layer in enumerate(layers):
        adapters.layers[i] = layer
    adapters.config.experts = layers[0].experts
    try:
        yield model
    finally:
        for i, layer in enumerate(saved):
            adapters.layers[i] = layer
        adapters.config.experts = experts


@contextmanager
def experts_averaged(model: nn.Module):
    """Temporarily deploy the weight-averaged experts (for evaluation during training); restore after."""
    adapters = getattr(model, PREFIX, None)
    if adapters is None or adapters.config.experts == 1:
        yield model
        return
    with layers_installed(model, [layer.average_experts() for layer in adapters.layers]):
        yield model


def expected_adapter_params(encoder: nn.Module, config: TinyAttnConfig) -> int:
    """The formula: one adapter per distinct attention sub-layer, E (7D + 3) each for d = 1."""
    n = len(attention_sublayers(encoder))
    return n * param_count(encoder.config.hidden_size, config.head_dim, config.experts)
