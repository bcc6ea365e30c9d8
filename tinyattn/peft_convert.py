"""Moving a tiny-attention model between the library's native route and the PEFT route.

Native (``tinyattn.methods.build_model("tinyattn", ...)``, saved by ``tinyattn.checkpoint``): an
``EncoderClassifier`` (encoder, then dropout -> Linear on the first token) whose adapters are attached
by hooks. PEFT (``tinyattn.peft``): a ``PeftModel`` over the same ``EncoderClassifier``, its adapters
in ``TinyAttentionLayer`` wrappers and its head in ``modules_to_save``. Both compute the same function;
the conversion copies the weights and checks nothing else is needed. Between folders:

    to_peft("runs/adapters/<run id>").save_pretrained("peft_folder")   # native folder -> PEFT folder
    base = EncoderClassifier(load_encoder("minilm-l6"), num_labels=2)
    save_adapter(to_native(PeftModel.from_pretrained(base, "peft_folder")), "native_folder")

A PEFT model over a ``transformers`` task model (``AutoModelForSequenceClassification``) has that
model's own head (BERT: pooler + classifier), which the native format cannot hold: ``to_native`` refuses
it. Its adapters alone run natively too: ``tinyattn.inject.TinyAttentionAdapters`` hooked into the same
model computes the same function (``tests/test_peft.py`` checks that).
"""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path

from peft import PeftModel, get_peft_model
from peft.utils.other import AuxiliaryTrainingWrapper

from tinyattn.checkpoint import load_adapter
from tinyattn.inject import PREFIX, TinyAttnConfig
from tinyattn.methods import build_model
from tinyattn.model import EncoderClassifier
from tinyattn.peft import TinyAttentionConfig, tiny_attention_layers, unwrap_layers


def to_peft(
    native: EncoderClassifier | str | Path, backbone=None, adapter_name: str = "default"
) -> PeftModel:
    """The PEFT model that computes what a native tiny-attention model computes.

    ``native``: the model (left unchanged: it is copied) or its saved folder; ``backbone``: for a
    folder, the encoder or backbone name to load it into (default: the saved one, checked). The head
    goes into ``modules_to_save``. Note that, as natively, the classifier keeps the frozen encoder in
    eval mode while training (``EncoderClassifier.backbone_dropout``)."""
    if isinstance(native, (str, Path)):
        model = load_adapter(native, backbone)
    else:
        model = copy.deepcopy(native)
    adapters = getattr(model, PREFIX, None)
    if adapters is None:
        raise ValueError("to_peft: the model has no native tiny-attention adapters")
    adapters.detach_hooks()
    delattr(model, PREFIX)
    config = TinyAttentionConfig(**adapters.config.to_dict(), modules_to_save=["head"])
    peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    layers = tiny_attention_layers(peft_model)
    if len(layers) != len(adapters.layers):
        raise ValueError(f"to_peft: {len(adapters.layers)} native layers, {len(layers)} in PEFT")
    for layer, native_layer in zip(layers, adapters.layers):
        getattr(layer, PREFIX)[adapter_name].load_state_dict(native_layer.state_dict())
    return peft_model.train(model.training)


def to_native(peft_model: PeftModel, adapter_name: str | None = None) -> EncoderClassifier:
    """The native model (``build_model("tinyattn", ...)``) that computes what a PEFT tiny-attention
    model over an ``EncoderClassifier`` computes, with adapter ``adapter_name`` (default: the active
    one); save it with ``tinyattn.checkpoint.save_adapter``."""
    name = adapter_name or peft_model.active_adapter
    base = peft_model.get_base_model()
    if not isinstance(base, EncoderClassifier):
        raise ValueError(
            "to_native: the native format holds the library's own head (EncoderClassifier: first token "
            f"-> Linear); this PEFT model is over {type(base).__name__}, whose head it cannot hold"
        )
    peft_config = peft_model.peft_config[name]
    options = {f.name: getattr(peft_config, f.name) for f in fields(TinyAttnConfig)}
    encoder = unwrap_layers(copy.deepcopy(base.encoder))
    native = build_model("tinyattn", encoder, base.num_labels, options, head_dropout=base.dropout.p)
    layers = tiny_attention_layers(peft_model)
    for native_layer, layer in zip(getattr(native, PREFIX).layers, layers, strict=True):
        native_layer.load_state_dict(getattr(layer, PREFIX)[name].state_dict())
    head = base.head
    if isinstance(head, AuxiliaryTrainingWrapper):  # modules_to_save: the adapter's own copy
        head = head.modules_to_save[name]
    native.head.load_state_dict(head.state_dict())
    return native.train(peft_model.training)
