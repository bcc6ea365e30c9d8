"""Tiny attention as a PEFT method: ``import tinyattn.peft`` registers it with the ``peft`` library.

    from peft import PeftModel, get_peft_model
    from tinyattn.peft import TinyAttentionConfig, average_experts

    model = get_peft_model(base, TinyAttentionConfig(experts=4, task_type="SEQ_CLS"))
    model.save_pretrained("out")                          # adapter_config.json + adapter_model.safetensors
    again = PeftModel.from_pretrained(fresh_base, "out")  # the same function, the same logits
    average_experts(again)                                # deploy the E experts as their weight average

``base``: any BERT, RoBERTa or ALBERT model from ``transformers`` (``AutoModel``,
``AutoModelForSequenceClassification``, ...) or a module holding one, such as the library's own
``EncoderClassifier``. Every self-attention sub-layer is wrapped by a ``TinyAttentionLayer``, which runs
the sub-layer and adds the update of a ``tinyattn.adapter.TinyAttention`` (the library's adapter, not a
second implementation) over the non-padding tokens: read from the sub-layer's output
(``placement="after_attention"``) or from its input (``"parallel_attention"``), as the native route
(``tinyattn.inject``) does with hooks. ALBERT shares one layer's weights across its depth, so it gets one
shared adapter, as natively.

Tiny attention is attention over the tokens, not a change of a weight matrix: it cannot be merged into
the base weights, and ``merge_and_unload`` says so. ``average_experts`` is the deployment step instead.
Unlike the native route, which keeps a frozen backbone's dropout off while training, a PEFT model
follows ``model.train()`` everywhere, as LoRA does through PEFT.

Checked with PEFT 0.15, 0.17, 0.18, 0.20 and 0.21, on transformers 4.57 and 5.x.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import peft
import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_target_module_exists
from peft.utils import PeftType
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from tinyattn.adapter import COMBINES, CONTEXTS, check_options
from tinyattn.inject import (
    PLACEMENTS,
    PREFIX,
    SUPPORTED_ARCHITECTURES,
    attention_sublayers,
    new_adapter,
    option_values,
)

#: PEFT's name of the method (``adapter_config.json`` says ``"peft_type": "TINY_ATTENTION"``).
PEFT_TYPE_NAME = "TINY_ATTENTION"

MERGE_MESSAGE = (
    "tiny attention cannot be merged into the base weights: its update is attention over the tokens, "
    "not a change of a weight matrix. To deploy E experts as one adapter, call "
    "tinyattn.peft.average_experts(model); to remove the adapters, call model.unload()."
)


class NotMergeableError(NotImplementedError):
    """Raised by ``merge_and_unload`` and ``merge_adapter``: see ``MERGE_MESSAGE``."""


def add_peft_type(name: str) -> PeftType:
    """Add member ``name`` (value = name, as all of PEFT's own) to PEFT's closed ``PeftType`` enum and
    return it; a no-op returning the member when it exists.

    ``register_peft_method`` looks the method up in ``PeftType``, which Python's ``enum`` lets no one
    extend. The member is therefore built as ``enum`` builds one (a ``str`` of the enum's class with
    ``_name_``/``_value_``) and entered in the enum's lookup tables: by name (attribute, ``PeftType[n]``,
    iteration) and by value (``PeftType(v)``, as configs read from JSON are parsed). The result is checked
    through the public API; a Python or PEFT version where this no longer holds raises ``ImportError``.
    """
    if name in PeftType.__members__:
        return PeftType[name]
    try:
        member = str.__new__(PeftType, name)
        member._name_ = member._value_ = name
        member.__objclass__ = PeftType
        member._sort_order_ = len(PeftType._member_names_)  # read by enum on Python >= 3.11
        PeftType._member_names_.append(name)  # iteration, len()
        PeftType._member_map_[name] = member  # PeftType[name], PeftType.__members__
        PeftType._value2member_map_[name] = member  # PeftType(value)
        type.__setattr__(PeftType, name, member)  # PeftType.NAME (EnumType.__setattr__ refuses)
        works = PeftType(name) is PeftType[name] is getattr(PeftType, name) is member
        works = works and member in list(PeftType) and member == name
    except Exception as err:  # a Python whose enum internals differ
        raise ImportError(_cannot_register(name)) from err
    if not works:
        raise ImportError(_cannot_register(name))
    return member


def _cannot_register(name: str) -> str:
    return (
        f"tinyattn.peft cannot register tiny attention with PEFT {peft.__version__}: adding "
        f"{name!r} to peft.utils.PeftType failed; tinyattn.peft was checked with PEFT 0.15-0.21"
    )


TINY_ATTENTION = add_peft_type(PEFT_TYPE_NAME)


@dataclass
class TinyAttentionConfig(PeftConfig):
    """The PEFT configuration of tiny attention: the options of ``tinyattn.inject.TinyAttnConfig``.

    head_dim: d, the attention width of one expert (1 in the paper); experts: E; placement:
    ``"after_attention"`` (reads the attention sub-layer's output; the authors' default) or
    ``"parallel_attention"`` (reads its input); context: ``"full"`` | ``"self"`` (each token attends
    only to itself: the ablation); dropout on the attention probabilities; combine: ``"mean"`` |
    ``"sequential"`` (how E experts combine); out_scale: the output Linear's factor at construction.
    target_modules: the attention sub-layers (default: every one of a BERT, RoBERTa or ALBERT model);
    modules_to_save: e.g. the classifier head (``task_type="SEQ_CLS"`` adds it, as for any PEFT method).
    """

    head_dim: int = field(default=1, metadata={"help": "attention width of one expert (d)"})
    experts: int = field(default=1, metadata={"help": "number of experts (E)"})
    placement: str = field(default="after_attention", metadata={"help": f"one of {PLACEMENTS}"})
    context: str = field(default="full", metadata={"help": f"one of {CONTEXTS}"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the attention probabilities"})
    combine: str = field(default="mean", metadata={"help": f"one of {COMBINES}"})
    out_scale: float = field(default=0.01, metadata={"help": "output Linear scale at construction"})
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "the attention sub-layers (default: all of them)"}
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "module names to leave without an adapter"}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "modules trained and saved in full, e.g. the head"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = TINY_ATTENTION
        if self.placement not in PLACEMENTS:
            raise ValueError(
                f"TinyAttentionConfig: unknown placement {self.placement!r}; one of {PLACEMENTS}"
            )
        check_options("TinyAttentionConfig", **option_values(self))


def padding_mask(attention_mask, batch: int, length: int) -> torch.Tensor | None:
    """The (B, T) mask of real tokens (True) from the mask an attention sub-layer receives, or None
    when nothing is padding.

    transformers hands a sub-layer a 2-D mask (1 = real; flash attention), a 4-D additive float mask
    (0 = may attend, a large negative number = may not; eager, and sdpa on 4.57) or a 4-D boolean mask
    (True = may attend; sdpa on 5.x), each (B, 1, 1, T) or (B, 1, T, T), or None without padding. A key is
    a real token when every query that may attend anywhere may attend to it (padding rows that a mask
    leaves all-masked, or all-open for the kernel's sake, do not count).
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() == 2:
        real = attention_mask != 0
    elif attention_mask.dim() == 4:
        if attention_mask.dtype == torch.bool:
            allowed = attention_mask[:, 0]
        else:
            allowed = attention_mask[:, 0] > torch.finfo(attention_mask.dtype).min / 2
        attends = allowed.any(-1, keepdim=True)  # (B, Tq, 1): queries that may attend somewhere
        real = (allowed | ~attends).all(1)  # (B, Tk)
    else:
        raise ValueError(
            f"tiny attention: cannot read an attention mask of shape {attention_mask.shape}"
        )
    if real.shape != (batch, length):
        raise ValueError(
            f"tiny attention: attention mask {tuple(attention_mask.shape)} does not fit hidden states "
            f"of batch {batch} and length {length}"
        )
    # Without padding, attending unmasked is the same function (a check a GPU would wait for is skipped).
    return None if not real.is_cuda and bool(real.all()) else real


class TinyAttentionLayer(nn.Module, BaseTunerLayer):
    """An attention sub-layer plus one ``TinyAttention`` per adapter name (``self.tiny_attention``)."""

    # The ModuleDict is named PREFIX: PEFT finds, freezes and saves adapter weights by that name, and
    # keys them ``<sub-layer>.tiny_attention.<adapter name>.<parameter>`` (the name second to last).
    adapter_layer_names = (PREFIX,)
    other_param_names = ("placement",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, hidden_size: int):
        super().__init__()
        self.base_layer = base_layer
        setattr(self, PREFIX, nn.ModuleDict())
        self.placement: dict[str, str] = {}
        self.hidden_size = hidden_size
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: TinyAttentionConfig) -> None:
        """Add (or replace) adapter ``adapter_name``: a freshly initialised ``TinyAttention``."""
        adapter = new_adapter(self.hidden_size, config)
        weight = next(self.base_layer.parameters())
        dtype = weight.dtype if weight.dtype.is_floating_point else None
        adapter.to(device=weight.device, dtype=dtype).train(self.base_layer.training)
        getattr(self, PREFIX)[adapter_name] = adapter
        self.placement[adapter_name] = config.placement
        self.set_adapter(self.active_adapters)  # only active adapters train

    def forward(self, *args, **kwargs):
        output = self.base_layer(*args, **kwargs)
        adapters = getattr(self, PREFIX)
        active = [name for name in self.active_adapters if name in adapters]
        if self.disable_adapters or not active:
            return output
        hidden = args[0] if args else kwargs["hidden_states"]  # the sub-layer's input
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        mask = padding_mask(mask, hidden.shape[0], hidden.shape[1])
        attended = output[0] if isinstance(output, tuple) else output  # the sub-layer's output
        updated = attended
        for name in active:  # several active adapters: their updates add up
            adapter = adapters[name]
            source = attended if self.placement[name] == "after_attention" else hidden
            dtype = adapter.qkv_weight.dtype
            updated = adapter(source.to(dtype), mask, residual=updated.to(dtype))
        updated = updated.to(attended.dtype)
        return (updated, *output[1:]) if isinstance(output, tuple) else updated

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)  # e.g. BertAttention.self, for code that reads it

    def merge(self, *args, **kwargs) -> None:
        raise NotMergeableError(MERGE_MESSAGE)

    def unmerge(self) -> None:
        pass  # never merged

    def __repr__(self) -> str:
        return f"{PREFIX}." + super().__repr__()


def _encoder(model: nn.Module) -> nn.Module:
    """The BERT, RoBERTa or ALBERT encoder inside ``model``; a clear error for any other model."""
    model_type = None
    for module in model.modules():
        config_type = getattr(getattr(module, "config", None), "model_type", None)
        model_type = model_type or config_type
        if config_type in SUPPORTED_ARCHITECTURES and hasattr(module, "encoder"):
            return module
    raise ValueError(
        f"tiny attention supports {', '.join(SUPPORTED_ARCHITECTURES)} models; this one is "
        f"{model_type or 'not a transformers model'} ({type(model).__name__})"
    )


class TinyAttentionModel(BaseTuner):
    """PEFT's tuner for tiny attention: wraps every targeted attention sub-layer in a ``TinyAttentionLayer``."""

    prefix: str = PREFIX
    tuner_layer_cls = TinyAttentionLayer
    target_module_mapping = {arch: ["attention"] for arch in SUPPORTED_ARCHITECTURES}

    def _prepare_adapter_config(self, peft_config, model_config):
        _encoder(self.model)  # an unsupported architecture fails here, before anything changes
        if peft_config.target_modules is None:
            peft_config.target_modules = ["attention"]  # BertAttention & co, one per layer
        return peft_config

    @staticmethod
    def _check_target_module_exists(peft_config, key: str):
        return check_target_module_exists(peft_config, key)

    def _create_and_replace(
        self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs
    ) -> None:
        encoder = _encoder(self.model)
        sublayers = [getattr(m, "base_layer", m) for m in attention_sublayers(encoder)]
        if not any(getattr(target, "base_layer", target) is m for m in sublayers):
            raise ValueError(
                f"tiny attention wraps self-attention sub-layers only; {current_key!r} "
                f"({type(target).__name__}) is not one: check target_modules"
            )
        if isinstance(target, TinyAttentionLayer):
            target.update_layer(adapter_name, peft_config)
            return
        hidden_size = encoder.config.hidden_size
        new = TinyAttentionLayer(target, adapter_name, peft_config, hidden_size)
        if adapter_name not in self.active_adapters:
            new.requires_grad_(False)  # a second adapter waits until set_adapter
        self._replace_module(parent, target_name, new, target)

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        # BaseTuner's version copies ``child.weight``, which an attention sub-layer does not have.
        setattr(parent, child_name, new_module)

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        """Freeze everything but the adapters (their ``requires_grad`` is set per adapter by
        ``set_adapter``) and the modules PEFT trains in full (``modules_to_save``)."""
        keep = set()
        for module in model.modules():
            if isinstance(module, TinyAttentionLayer):
                keep.update(id(p) for p in getattr(module, PREFIX).parameters())
            elif isinstance(module, AuxiliaryTrainingWrapper):
                keep.update(id(p) for p in module.parameters())
        for param in model.parameters():
            if id(param) not in keep:
                param.requires_grad = False

    def _set_adapter_layers(self, enabled: bool) -> None:
        for module in self.model.modules():
            if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
                module.enable_adapters(enabled)

    def enable_adapter_layers(self) -> None:
        self._set_adapter_layers(True)

    def disable_adapter_layers(self) -> None:
        self._set_adapter_layers(False)

    def merge_adapter(self, *args, **kwargs) -> None:
        raise NotMergeableError(MERGE_MESSAGE)

    def merge_and_unload(self, *args, **kwargs) -> nn.Module:
        raise NotMergeableError(MERGE_MESSAGE)

    def _unload_and_optionally_merge(self, merge: bool = True, *args, **kwargs):
        if merge:
            raise NotMergeableError(MERGE_MESSAGE)
        return super()._unload_and_optionally_merge(False, *args, **kwargs)

    if not hasattr(BaseTuner, "set_adapter"):  # PEFT < 0.18 leaves these to each method

        def __getattr__(self, name: str):
            try:
                return super().__getattr__(name)
            except AttributeError:
                if name == "model":
                    raise
                return getattr(self.model, name)  # e.g. the base model's config

        def set_adapter(self, adapter_name, inference_mode: bool = False) -> None:
            for layer in tiny_attention_layers(self.model):
                layer.set_adapter(adapter_name)
            self.active_adapter = adapter_name

        def delete_adapter(self, adapter_name: str) -> None:
            del self.peft_config[adapter_name]
            remaining = []
            for layer in tiny_attention_layers(self.model):
                layer.delete_adapter(adapter_name)
                remaining = layer.active_adapters[:]
            self.active_adapter = remaining

        def unload(self) -> nn.Module:
            return unwrap_layers(self.model)


def tiny_attention_layers(model: nn.Module) -> list[TinyAttentionLayer]:
    """The model's tiny-attention tuner layers, bottom to top (ALBERT: one, shared)."""
    return [m for m in model.modules() if isinstance(m, TinyAttentionLayer)]


def unwrap_layers(model: nn.Module) -> nn.Module:
    """Put every attention sub-layer back in place of its ``TinyAttentionLayer``, in place; returns
    ``model`` (what ``unload`` does; here also for a bare module holding such layers)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, TinyAttentionLayer):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    return model


def average_experts(model: nn.Module, adapter_name: str | None = None) -> nn.Module:
    """Deploy: replace every layer's E experts of an adapter (default: each active one) by their
    element-wise weight average, in place; the adapter's config then says ``experts=1``, so the saved
    folder loads back as the deployed model. Returns ``model``."""
    names = [adapter_name] if adapter_name else list(model.active_adapters)
    layers = tiny_attention_layers(model)
    if not layers:
        raise ValueError("average_experts: the model has no tiny-attention adapters")
    for layer in layers:
        adapters = getattr(layer, PREFIX)
        for name in names:
            trainable = adapters[name].qkv_weight.requires_grad
            adapters[name] = adapters[name].average_experts().requires_grad_(trainable)
    for name in names:
        model.peft_config[name].experts = 1
    return model


def _register() -> None:
    """Register the method with PEFT, once (``register_peft_method``: PEFT >= 0.15)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    try:
        from peft.utils import register_peft_method
    except ImportError as err:
        raise ImportError(
            f"tinyattn.peft needs PEFT >= 0.15 (register_peft_method); this is PEFT {peft.__version__}"
        ) from err
    if TINY_ATTENTION not in PEFT_TYPE_TO_TUNER_MAPPING:
        register_peft_method(
            name=PEFT_TYPE_NAME.lower(),
            config_cls=TinyAttentionConfig,
            model_cls=TinyAttentionModel,
            prefix=PREFIX,
        )


_register()
