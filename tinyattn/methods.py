"""One registry of methods: a name -> a function that makes exactly the intended parameters trainable.

Every method starts from the same ``EncoderClassifier`` (same backbone, same first-token head) and is
trained by the same loop; the registry is the only place where methods differ.

Methods: ``tinyattn`` (ours), ``full_ft``, ``head_only``, ``bitfit``, ``lora`` and ``ia3`` (peft),
``prefix``, ``houlsby``, ``pfeiffer`` and ``parallel`` (the ``adapters`` library). Each one's default
hyper-parameters and where they come from are in its ``register(...)`` call (``defaults=``,
``source=``); every default can be overridden through ``options``.

Dropout rule, the same for every method: only full fine-tuning keeps the pretrained network's dropout
on while training. Every other method trains with a frozen (or, for BitFit, bias-only) backbone and
sets ``model.backbone_dropout = False``, so ``model.train()`` keeps the encoder in eval mode, as the
tiny-attention authors' code does. Modules that a library adds *inside* the encoder (LoRA's dropout,
the adapters' and prefixes' dropout) would be switched off by that too; ``EncoderClassifier.train`` puts
them back in the classifier's own mode after switching the frozen encoder to eval mode,
so adapter-internal dropout behaves as it does for the tiny-attention adapters, which live outside the
encoder. With the default options none of the library methods has internal dropout (LoRA: 0.0, as in
the LoRA GLUE code; ``adapters``: 0.0; (IA)^3: none); it matters only when an option turns it on.

Library notes:
- peft methods wrap the encoder: ``model.encoder`` becomes a ``peft.PeftModel`` (its parameters are
  named ``encoder.base_model.model.…``); ``model.base_encoder`` unwraps it, and
  ``model.encoder.get_nb_trainable_parameters()`` is peft's own count.
- ``adapters`` methods change the encoder in place (``adapters.init``); it stays a ``BertModel`` /
  ``RobertaModel`` / ``AlbertModel`` (a subclass made by the library) with ``adapter_summary()``.
- All of them modify the encoder they are given: pass a fresh (or deep-copied) encoder to
  ``build_model`` for every model.
"""

from __future__ import annotations

import logging

from transformers import PreTrainedModel

from tinyattn.inject import PREFIX, TinyAttnConfig, add_tiny_attention
from tinyattn.model import EncoderClassifier, backbone_identity, load_encoder

# The registry's machinery (``Method``, ``register``, ``method_options``) is ``tinyattn.registry``;
# importing this module registers every method of the study there.
from tinyattn.registry import METHODS, Method, get_method, method_options, register

__all__ = ["METHODS", "Method", "RETIRED_OPTIONS", "build_model", "get_method", "method_options"]


def build_model(
    method: str,
    backbone: str | PreTrainedModel,
    num_labels: int,
    options: dict | None = None,
    *,
    head_dropout: float = 0.1,
) -> EncoderClassifier:
    """Backbone + head, then the method applied: only the intended parameters require grad."""
    spec = get_method(method)
    opts = method_options(method, options)
    encoder = load_encoder(backbone) if isinstance(backbone, str) else backbone
    identity = backbone_identity(encoder)
    model = EncoderClassifier(encoder, num_labels, head_dropout=head_dropout)
    spec.apply(model, opts)
    model.method, model.method_options = method, opts
    model.backbone_identity = (
        identity  # of the pretrained weights, before any training changes them
    )
    return model


def freeze_encoder(model: EncoderClassifier) -> None:
    for param in model.encoder.parameters():
        param.requires_grad_(False)


def frozen_backbone(model: EncoderClassifier) -> None:
    """The setting every method but full fine-tuning shares: encoder frozen, its dropout off in training."""
    freeze_encoder(model)
    model.backbone_dropout = False


# ----------------------------------------------------------------------------- methods
@register(
    "tinyattn",
    # its name inside an encoder as a PEFT method (tinyattn.peft); the native adapters sit outside it
    markers=(PREFIX,),
    retired={"init_from": None, "init_noise_std": 1e-6},  # the two-stage start, once an option
    train_tokens_per_second=760.0,
    flops=lambda o, D, n, form: (
        (1 if form == "averaged" else o["experts"])
        * (2 * 3 * D * o["head_dim"] + 4 * n * o["head_dim"] + 2 * o["head_dim"] * D)
    ),
    defaults=TinyAttnConfig().to_dict(),
    source="Zhao, Tan & Mei (2022) and their released code: d=1, dropout 0.1, placement m0, x0.01 init",
    description="tiny-attention adapter (ours): attention with head dimension d in every layer",
    check=TinyAttnConfig.from_dict,
)
def _tinyattn(model: EncoderClassifier, opts: dict) -> None:
    add_tiny_attention(model, TinyAttnConfig.from_dict(opts))


@register(
    "full_ft",
    train_tokens_per_second=420.0,
    flops=lambda o, D, n, form: 0,
    defaults={},
    source="Devlin et al. (2019); LoRA paper Table 2 full fine-tuning rows",
    description="full fine-tuning: every encoder parameter and the head train",
)
def _full_ft(model: EncoderClassifier, opts: dict) -> None:
    for param in model.parameters():
        param.requires_grad_(True)
    model.backbone_dropout = True


@register(
    "head_only",
    train_tokens_per_second=1700.0,
    flops=lambda o, D, n, form: 0,
    defaults={},
    source="linear probe on the frozen encoder: the floor every method must clear",
    description="only the classification head trains",
)
def _head_only(model: EncoderClassifier, opts: dict) -> None:
    freeze_encoder(model)
    model.backbone_dropout = False


# ----------------------------------------------------------------------------- BitFit
#: BitFit's bias groups, as named in the authors' code (benzakenelad/BitFit, ``BIAS_TERMS_DICT``): a
#: parameter trains when its name ends with the group's suffix. ``all`` (their default) is every bias.
BITFIT_BIAS_TERMS = {
    "all": "bias",
    "query": "attention.self.query.bias",
    "key": "attention.self.key.bias",
    "value": "attention.self.value.bias",
    "intermediate": "intermediate.dense.bias",
    "output": "output.dense.bias",
    "output_layernorm": "output.LayerNorm.bias",
    "attention_layernorm": "attention.output.LayerNorm.bias",
}


@register(
    "bitfit",
    train_tokens_per_second=860.0,
    # all bias terms of the encoder (LayerNorm biases included), as the BitFit paper's main results
    defaults={"bias_terms": ["all"]},
    source="Ben Zaken, Goldberg & Ravfogel (2022), BitFit; their code's --bias-terms all",
    description="BitFit: only the encoder's bias terms (and the head) train",
)
def _bitfit(model: EncoderClassifier, opts: dict) -> None:
    terms = opts["bias_terms"]
    terms = [terms] if isinstance(terms, str) else list(terms)
    unknown = [t for t in terms if t not in BITFIT_BIAS_TERMS]
    if unknown or not terms:
        raise ValueError(
            f"bitfit: unknown bias_terms {unknown or terms}; choose from {sorted(BITFIT_BIAS_TERMS)}"
        )
    suffixes = tuple(BITFIT_BIAS_TERMS[t] for t in terms)
    # bias-only: the pretrained weights stay fixed, so BitFit follows the frozen-backbone rule
    frozen_backbone(model)
    trained = 0
    for name, param in model.encoder.named_parameters():
        if name.endswith(suffixes):
            param.requires_grad_(True)
            trained += 1
    if not trained:
        raise ValueError(f"bitfit: no encoder parameter ends with any of {suffixes}")


# ----------------------------------------------------------------------------- peft: LoRA, (IA)^3
@register(
    "lora",
    markers=("lora_",),
    train_tokens_per_second=840.0,
    # down (D -> r) and up (r -> D) beside each target projection; nothing once merged
    flops=lambda o, D, n, form: (
        0 if form == "merged" else len(o["target_modules"]) * 4 * D * o["r"]
    ),
    # r = 8 and alpha = 16 on W_q and W_v, no LoRA dropout: microsoft/LoRA examples/NLU
    # roberta_base_*.sh (--lora_r 8 --lora_alpha 16; their loralib layers get no dropout).
    defaults={"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["query", "value"]},
    source="Hu et al. (2022), LoRA; microsoft/LoRA examples/NLU roberta_base_*.sh: r=8, alpha=16, "
    "W_q and W_v, no LoRA dropout; implemented with peft LoraConfig",
    description="LoRA: low-rank updates of the query and value projections (peft)",
)
def _lora(model: EncoderClassifier, opts: dict) -> None:
    import peft

    config = peft.LoraConfig(
        r=opts["r"],
        lora_alpha=opts["lora_alpha"],
        lora_dropout=opts["lora_dropout"],
        target_modules=list(opts["target_modules"]),
        bias="none",
    )
    _wrap_with_peft(model, config)


#: (IA)^3's three vectors per layer: l_k, l_v (rescale the key and value projections' outputs) and
#: l_ff (rescales the FFN's intermediate activation, i.e. the input of its second linear layer). peft's
#: own BERT/RoBERTa mapping ["key", "value", "output.dense"] also matches ``attention.output.dense``
#: (peft matches name suffixes), which the paper does not rescale; it is excluded here.
IA3_TARGETS = {
    "bert": {
        "target_modules": ["key", "value", "output.dense"],
        "feedforward_modules": ["output.dense"],
        "exclude_modules": ["attention.output.dense"],
    },
    "roberta": {
        "target_modules": ["key", "value", "output.dense"],
        "feedforward_modules": ["output.dense"],
        "exclude_modules": ["attention.output.dense"],
    },
    "albert": {
        "target_modules": ["key", "value", "ffn_output"],
        "feedforward_modules": ["ffn_output"],
        "exclude_modules": [],
    },
}


@register(
    "ia3",
    markers=("ia3_",),
    train_tokens_per_second=990.0,
    # None: the architecture's entry in IA3_TARGETS (k, v and the FFN's second linear layer)
    defaults={"target_modules": None, "feedforward_modules": None, "exclude_modules": None},
    source="Liu et al. (2022), (IA)^3: l_k, l_v, l_ff, initialised to ones; peft IA3Config with "
    "peft's BERT/RoBERTa targets minus attention.output.dense",
    description="(IA)^3: learned rescaling of keys, values and FFN activations (peft)",
)
def _ia3(model: EncoderClassifier, opts: dict) -> None:
    import peft

    model_type = model.base_encoder.config.model_type
    resolved = {}
    for key in ("target_modules", "feedforward_modules", "exclude_modules"):
        if opts[key] is not None:
            resolved[key] = list(opts[key])
        elif model_type in IA3_TARGETS:
            resolved[key] = list(IA3_TARGETS[model_type][key])
        else:
            raise ValueError(
                f"ia3: no default targets for architecture {model_type!r}; pass the option {key}"
            )
    config = peft.IA3Config(
        target_modules=resolved["target_modules"],
        feedforward_modules=resolved["feedforward_modules"],
        exclude_modules=resolved["exclude_modules"] or None,
    )
    _wrap_with_peft(model, config)


def _wrap_with_peft(model: EncoderClassifier, config) -> None:
    """``model.encoder`` becomes a ``peft.PeftModel``; peft freezes everything but its own weights."""
    import peft

    frozen_backbone(model)
    model.encoder = peft.get_peft_model(model.encoder, config)


# ----------------------------------------------------------------------------- adapters library
#: The methods that come from AdapterHub's ``adapters``, an optional extra (it pins transformers 4.57).
ADAPTERS_METHODS = ("prefix", "houlsby", "pfeiffer", "parallel")


def adapters_library(method: str):
    """The ``adapters`` package, or an error naming the extra that brings it."""
    try:
        import adapters
    except ImportError as err:
        raise ValueError(
            f"method {method!r} comes from AdapterHub's `adapters` package, which is not installed: "
            "pip install 'tinyattn[adapters]' (it pins transformers 4.57)"
        ) from err
    return adapters


def _add_library_adapter(model: EncoderClassifier, name: str, config) -> None:
    """Add one ``adapters`` adapter to the encoder (in place) and train only it.

    ``train_adapter`` freezes the encoder and activates the adapter; it also switches the encoder to
    train mode, so the encoder's previous mode is restored afterwards.
    """
    adapters = adapters_library(name)

    frozen_backbone(model)
    encoder = model.encoder
    was_training = encoder.training
    adapters.init(encoder)
    # set_active_adapters() runs a LoRA reset inside a forward context before the adapter is active,
    # which logs a spurious "adapters available but none are activated" warning; mute it here only.
    library_logger = logging.getLogger("adapters.model_mixin")
    level = library_logger.level
    library_logger.setLevel(logging.ERROR)
    try:
        encoder.add_adapter(name, config=config, set_active=True)
        encoder.train_adapter(name)
    finally:
        library_logger.setLevel(level)
    encoder.train(was_training)


@register(
    "prefix",
    markers=("prefix", "prompt_encoder"),
    train_tokens_per_second=620.0,
    flops=lambda o, D, n, form: 4 * o["prefix_length"] * D,  # prefix_length more keys and values
    # adapters' PrefixTuningConfig defaults: 30 prefix vectors per layer for keys and values,
    # reparameterised (flat=False) by Li & Liang's MLP (embedding -> 512 -> tanh -> 2 x layers x D)
    defaults={"prefix_length": 30, "bottleneck_size": 512, "flat": False},
    source="Li & Liang (2021), prefix-tuning with the MLP reparameterisation (hidden 512); "
    "adapters library PrefixTuningConfig defaults (prefix_length=30)",
    description="prefix-tuning: trained key/value prefixes in every attention layer (adapters)",
)
def _prefix(model: EncoderClassifier, opts: dict) -> None:
    # The adapters library, not peft: its prefixes are added inside the attention layers of a plain
    # BertModel/RobertaModel/AlbertModel and it extends the attention mask itself, so our classifier
    # and forward stay as they are. peft's prefix tuning needs a task-typed PeftModel
    # (FEATURE_EXTRACTION) that feeds the prefixes through the model's past_key_values cache interface,
    # which transformers keeps changing; the bottleneck adapters below use the same library.
    config = adapters_library("prefix").PrefixTuningConfig(**opts)
    _add_library_adapter(model, "prefix", config)


@register(
    "houlsby",
    markers=("adapters.", "adapter_"),
    train_tokens_per_second=750.0,
    flops=lambda o, D, n, form: 2 * 2 * (2 * D * (D // o["reduction_factor"])),  # two D -> D/f -> D
    # adapters' DoubleSeqBnConfig defaults: bottleneck adapters after the attention and the FFN
    # sub-layers, D/16 wide, swish; Houlsby et al. tuned the width in {8, 64, 256}
    defaults={"reduction_factor": 16, "non_linearity": "swish"},
    source="Houlsby et al. (2019); adapters library DoubleSeqBnConfig (double_seq_bn) defaults: "
    "reduction factor 16, swish",
    description="Houlsby adapters: two sequential bottleneck adapters per layer (adapters)",
)
def _houlsby(model: EncoderClassifier, opts: dict) -> None:
    config = adapters_library("houlsby").DoubleSeqBnConfig(**opts)
    _add_library_adapter(model, "houlsby", config)


@register(
    "pfeiffer",
    markers=("adapters.", "adapter_"),
    train_tokens_per_second=740.0,
    flops=lambda o, D, n, form: 2 * (2 * D * (D // o["reduction_factor"])),  # one D -> D/f -> D
    # adapters' SeqBnConfig defaults: one bottleneck adapter after the FFN, D/16 wide, relu
    defaults={"reduction_factor": 16, "non_linearity": "relu"},
    source="Pfeiffer et al. (2021), AdapterFusion; adapters library SeqBnConfig (seq_bn) defaults: "
    "reduction factor 16, relu",
    description="Pfeiffer adapters: one sequential bottleneck adapter per layer, after the FFN "
    "(adapters)",
)
def _pfeiffer(model: EncoderClassifier, opts: dict) -> None:
    config = adapters_library("pfeiffer").SeqBnConfig(**opts)
    _add_library_adapter(model, "pfeiffer", config)


@register(
    "parallel",
    markers=("adapters.", "adapter_"),
    train_tokens_per_second=860.0,
    # adapters' ParBnConfig defaults: a bottleneck adapter parallel to the FFN, D/2 wide, relu,
    # output scaled by 4, up-projection initialised to zero (He et al.'s "mam_adapter" init)
    defaults={"reduction_factor": 2, "non_linearity": "relu", "scaling": 4.0},
    source="He et al. (2022), Towards a Unified View of PETL: parallel adapter at the FFN, scaling 4; "
    "adapters library ParBnConfig (par_bn) defaults: reduction factor 2",
    description="parallel adapter: a scaled bottleneck branch beside every FFN (adapters)",
)
def _parallel(model: EncoderClassifier, opts: dict) -> None:
    config = adapters_library("parallel").ParBnConfig(**opts)
    _add_library_adapter(model, "parallel", config)


def library_adapter_params(model: EncoderClassifier) -> int | None:
    """The method library's own count of the parameters it trains (None for methods without one).

    peft: ``PeftModel.get_nb_trainable_parameters()``; adapters: ``adapter_summary(as_dict=True)``.
    """
    encoder = model.encoder
    if hasattr(encoder, "get_nb_trainable_parameters"):
        return encoder.get_nb_trainable_parameters()[0]
    if hasattr(encoder, "adapter_summary"):
        rows = encoder.adapter_summary(as_dict=True)
        return sum(row["#param"] for row in rows if row["name"] != "Full model")
    return None


#: Every method's retired options (``Method.retired``), by name: what ``RunParams.identity`` adds back.
RETIRED_OPTIONS = {name: dict(m.retired) for name, m in METHODS.items() if m.retired}
