"""Tiny attention as a PEFT method (tinyattn.peft, tinyattn.peft_convert): registration, the round trip
through save_pretrained / from_pretrained, adapter management, deployment, the native route computing
the same function, and training with transformers.Trainer."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from conftest import TINY_CONFIG, tiny_batch, tiny_encoder
from peft import PeftConfig, PeftModel, get_peft_model
from peft.utils import PeftType
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification

from tinyattn.adapter import param_count
from tinyattn.checkpoint import load_adapter, save_adapter
from tinyattn.inject import PREFIX, TinyAttentionAdapters, TinyAttnConfig
from tinyattn.methods import build_model
from tinyattn.model import EncoderClassifier, resolve_backbone
from tinyattn.peft import (
    PEFT_TYPE_NAME,
    NotMergeableError,
    TinyAttentionConfig,
    add_peft_type,
    average_experts,
    padding_mask,
    tiny_attention_layers,
)
from tinyattn.peft_convert import to_native, to_peft

ARCHS = ("bert", "roberta", "albert")
LABELS = 3


def task_model(kind: str = "bert", attn: str = "eager", seed: int = 0):
    """A 2-layer, 32-wide random sequence classifier built from its config (nothing downloaded)."""
    extra = {"embedding_size": 16} if kind == "albert" else {}
    config = AutoConfig.for_model(
        kind,
        **TINY_CONFIG,
        num_labels=LABELS,
        **({"pad_token_id": 1} if kind == "roberta" else {}),
        **extra,
    )
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()


def randomise(module: torch.nn.Module, seed: int = 1) -> None:
    """Large random adapter weights, so that the adapters' effect is far above float noise."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)


def peft_model(kind="bert", attn="eager", **options):
    model = get_peft_model(
        task_model(kind, attn), TinyAttentionConfig(task_type="SEQ_CLS", **options)
    )
    for layer in tiny_attention_layers(model):
        randomise(getattr(layer, PREFIX)["default"])
    return model.eval()


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch)
    return getattr(out, "logits", out)


# ------------------------------------------------------------------------------------- registration
def test_registration_adds_one_enum_member_and_loads_configs_back(tmp_path):
    member = PeftType[PEFT_TYPE_NAME]
    assert add_peft_type(PEFT_TYPE_NAME) is member  # idempotent
    assert PeftType(PEFT_TYPE_NAME) is member and member in list(PeftType)
    assert list(PeftType).count(member) == 1
    config = TinyAttentionConfig(experts=4, placement="parallel_attention", task_type="SEQ_CLS")
    assert config.peft_type is member
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == PEFT_TYPE_NAME
    again = PeftConfig.from_pretrained(tmp_path)
    assert type(again) is TinyAttentionConfig and again.experts == 4
    assert again.placement == "parallel_attention" and again.peft_type is member


def test_registration_fails_loudly_where_the_enum_cannot_grow(monkeypatch):
    name = "TINYATTN_TEST_UNGROWABLE"
    monkeypatch.setattr(PeftType, "_member_names_", tuple(PeftType._member_names_))  # no append
    try:
        with pytest.raises(ImportError, match=f"PEFT {peft.__version__}"):
            add_peft_type(name)
    finally:
        PeftType._member_map_.pop(name, None)
        PeftType._value2member_map_.pop(name, None)
    assert name not in PeftType.__members__


def test_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="placement"):
        TinyAttentionConfig(placement="before_attention")
    with pytest.raises(ValueError, match="combine"):
        TinyAttentionConfig(combine="max")


@pytest.mark.parametrize(
    "options, named",
    [({"experts": 0}, "experts"), ({"head_dim": -1}, "head_dim"), ({"dropout": 1.0}, "dropout")],
)
def test_configs_reject_options_out_of_range(options, named):
    """In the configuration, as PEFT's own configs do, not later inside ``get_peft_model``."""
    from tinyattn.inject import TinyAttnConfig

    with pytest.raises(ValueError, match=f"TinyAttentionConfig: {named}"):
        TinyAttentionConfig(**options)
    with pytest.raises(ValueError, match=f"TinyAttnConfig: {named}"):
        TinyAttnConfig(**options)


# -------------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("kind", ARCHS)
def test_round_trip_gives_identical_logits(kind, tmp_path):
    model = peft_model(kind, experts=4)
    batch = tiny_batch()
    expected = logits(model, batch)
    with model.disable_adapter():
        assert (logits(model, batch) - expected).abs().max() > 1e-3  # the adapters matter
    model.save_pretrained(tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in tmp_path.iterdir()
    }
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    wrapped = tiny_attention_layers(model)  # still read as the sub-layers they wrap
    adapter_keys = {k for k in keys if f".{PREFIX}." in k}
    assert len(adapter_keys) == 6 * (1 if kind == "albert" else 2)  # 6 tensors per adapter
    assert all(hasattr(layer, "dense" if kind == "albert" else "self") for layer in wrapped)
    assert all(".default." not in k for k in keys)  # saved without the adapter name
    again = PeftModel.from_pretrained(task_model(kind), tmp_path).eval()
    torch.testing.assert_close(logits(again, batch), expected, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ARCHS)
@pytest.mark.parametrize("experts", [1, 4])
def test_trainable_parameters_follow_the_formula(kind, experts):
    model = get_peft_model(
        task_model(kind), TinyAttentionConfig(experts=experts, task_type="SEQ_CLS")
    )
    head = sum(p.numel() for p in task_model(kind).classifier.parameters())
    layers = 1 if kind == "albert" else 2  # ALBERT: one adapter shared by all its layers
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == layers * experts * (7 * 32 + 3) + head
    assert trainable == layers * param_count(32, 1, experts) + head
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(f".{PREFIX}.default." in n or "modules_to_save" in n for n in names)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ARCHS)
def test_padding_is_invisible(kind, attn):
    """Each sequence alone, unpadded, gets the logits it gets inside a padded batch."""
    model = peft_model(kind, attn, experts=2)
    batch = tiny_batch()
    together = logits(model, batch)
    for row in range(len(together)):
        n = int(batch["attention_mask"][row].sum())
        alone = {k: v[row : row + 1, :n] for k, v in batch.items()}
        torch.testing.assert_close(logits(model, alone)[0], together[row], rtol=1e-5, atol=1e-6)


def test_padding_mask_reads_every_mask_format():
    real = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool()
    additive = torch.zeros(2, 1, 4, 4).masked_fill(~real[:, None, None, :], torch.finfo().min)
    boolean = real[:, None, None, :].expand(2, 1, 4, 4)
    padded_rows_masked = boolean & real[:, None, :, None]  # padding queries attend nowhere
    padded_rows_open = padded_rows_masked | ~real[:, None, :, None]  # ... or everywhere
    for mask in (
        real.long(),
        additive,
        additive[:, :, :1],
        boolean,
        padded_rows_masked,
        padded_rows_open,
        torch.zeros(2, 1, 1, 4).masked_fill(~real[:, None, None, :], float("-inf")),
    ):
        assert torch.equal(padding_mask(mask, 2, 4), real), mask
    assert padding_mask(None, 2, 4) is None
    assert padding_mask(torch.zeros(2, 1, 1, 4), 2, 4) is None  # no padding: attend unmasked
    with pytest.raises(ValueError, match="does not fit"):
        padding_mask(real, 2, 5)


# ------------------------------------------------------------------------ one function, two routes
@pytest.mark.parametrize("placement", ["after_attention", "parallel_attention"])
@pytest.mark.parametrize("experts", [1, 4])
@pytest.mark.parametrize("kind", ARCHS)
def test_native_hooks_and_peft_compute_the_same_function(kind, experts, placement):
    """The same weights in the native route (inject's hooks) and the PEFT route, on the same model."""
    model = peft_model(kind, experts=experts, placement=placement)
    native_base = task_model(kind)
    native = TinyAttentionAdapters(
        native_base.base_model, TinyAttnConfig(experts=experts, placement=placement)
    )
    for native_layer, layer in zip(native.layers, tiny_attention_layers(model), strict=True):
        native_layer.load_state_dict(getattr(layer, PREFIX)["default"].state_dict())
    native.eval()
    batch = tiny_batch()
    torch.testing.assert_close(logits(native_base, batch), logits(model, batch))
    native.detach_hooks()
    with model.disable_adapter():
        torch.testing.assert_close(logits(native_base, batch), logits(model, batch))


@pytest.mark.parametrize("placement", ["after_attention", "parallel_attention"])
@pytest.mark.parametrize("experts", [1, 4])
def test_native_and_peft_checkpoints_convert_both_ways(experts, placement, tmp_path):
    """build_model('tinyattn') -> native folder -> PEFT folder -> native folder: the same logits."""
    encoder = tiny_encoder("bert")
    options = {"experts": experts, "placement": placement}
    native = build_model("tinyattn", copy.deepcopy(encoder), LABELS, options).eval()
    randomise(native.tiny_attention)
    randomise(native.head, seed=2)
    batch = tiny_batch()
    expected = logits(native, batch)
    save_adapter(native, tmp_path / "native")
    to_peft(tmp_path / "native", copy.deepcopy(encoder)).save_pretrained(tmp_path / "peft")
    base = EncoderClassifier(copy.deepcopy(encoder), LABELS)
    loaded = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    torch.testing.assert_close(logits(loaded, batch), expected)
    save_adapter(to_native(loaded), tmp_path / "back")
    back = load_adapter(tmp_path / "back", copy.deepcopy(encoder)).eval()
    torch.testing.assert_close(logits(back, batch), expected)
    assert native.tiny_attention.layers[0].experts == experts  # the source model is unchanged


def test_to_native_refuses_a_task_models_own_head():
    with pytest.raises(ValueError, match="BertForSequenceClassification"):
        to_native(peft_model("bert"))


# ------------------------------------------------------------------------------ adapter management
def test_add_set_disable_and_delete_adapters(tmp_path):
    model = peft_model("bert", experts=2)
    batch = tiny_batch()
    first = logits(model, batch)
    model.add_adapter(
        "other", TinyAttentionConfig(placement="parallel_attention", task_type="SEQ_CLS")
    )
    for layer in tiny_attention_layers(model):
        randomise(getattr(layer, PREFIX)["other"], seed=5)
    torch.testing.assert_close(logits(model, batch), first)  # the active adapter is still "default"
    model.set_adapter("other")
    second = logits(model, batch)
    assert (second - first).abs().max() > 1e-2
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and PREFIX in n}
    assert trainable and all(".other." in n for n in trainable)
    with model.disable_adapter():
        base = logits(model, batch)
    torch.testing.assert_close(base, logits(task_model("bert"), batch))
    torch.testing.assert_close(logits(model, batch), second)  # enabled again on leaving
    model.save_pretrained(tmp_path)  # every adapter: "other" in a sub-folder
    again = PeftModel.from_pretrained(task_model("bert"), tmp_path).eval()
    again.load_adapter(tmp_path / "other", adapter_name="other")
    torch.testing.assert_close(logits(again, batch), first)
    again.set_adapter("other")
    torch.testing.assert_close(logits(again, batch), second)
    model.set_adapter("default")
    model.delete_adapter("other")
    assert all(set(getattr(la, PREFIX)) == {"default"} for la in tiny_attention_layers(model))
    torch.testing.assert_close(logits(model, batch), first)


def test_merging_is_refused_and_unload_restores_the_base():
    model = peft_model("bert", experts=4)
    with pytest.raises(NotMergeableError, match=r"average_experts\(model\)"):
        model.merge_and_unload()
    with pytest.raises(NotMergeableError, match="cannot be merged"):
        model.merge_adapter()
    batch = tiny_batch()
    base = model.unload()
    assert not tiny_attention_layers(base)
    torch.testing.assert_close(logits(base, batch), logits(task_model("bert"), batch))


def test_average_experts_deploys_one_expert_that_saves_and_loads(tmp_path):
    model = peft_model("roberta", experts=4)
    layers = tiny_attention_layers(model)
    expected = [getattr(layer, PREFIX)["default"].average_experts() for layer in layers]
    average_experts(model)
    for layer, want in zip(layers, expected, strict=True):
        got = getattr(layer, PREFIX)["default"]
        assert got.experts == 1
        torch.testing.assert_close(got.qkv_weight, want.qkv_weight)
    assert model.peft_config["default"].experts == 1
    batch = tiny_batch()
    model.save_pretrained(tmp_path)
    again = PeftModel.from_pretrained(task_model("roberta"), tmp_path).eval()
    torch.testing.assert_close(logits(again, batch), logits(model, batch), rtol=0, atol=0)


def test_identical_experts_average_to_the_single_expert():
    single = peft_model("bert", experts=1)
    model = get_peft_model(task_model("bert"), TinyAttentionConfig(experts=3, task_type="SEQ_CLS"))
    for one, many in zip(tiny_attention_layers(single), tiny_attention_layers(model), strict=True):
        with torch.no_grad():  # three copies of the one expert
            for name, param in getattr(many, PREFIX)["default"].named_parameters():
                param.copy_(getattr(getattr(one, PREFIX)["default"], name).expand_as(param))
    model.eval()
    batch = tiny_batch()
    torch.testing.assert_close(logits(model, batch), logits(single, batch))
    torch.testing.assert_close(logits(average_experts(model), batch), logits(single, batch))


# ----------------------------------------------------------------------------------- unsupported
@pytest.mark.parametrize("kind", ["gpt2", "distilbert"])
def test_unsupported_architectures_get_a_clear_error(kind):
    config = AutoConfig.for_model(kind, vocab_size=100, num_labels=2, n_layer=1, n_layers=1)
    base = AutoModelForSequenceClassification.from_config(config)
    with pytest.raises(
        ValueError, match=f"supports bert, roberta, albert models; this one is {kind}"
    ):
        get_peft_model(base, TinyAttentionConfig(task_type="SEQ_CLS"))


def test_targets_other_than_attention_sublayers_are_refused():
    config = TinyAttentionConfig(target_modules=["query"], task_type="SEQ_CLS")
    with pytest.raises(ValueError, match="self-attention sub-layers only"):
        get_peft_model(task_model("bert"), config)


def test_half_precision_base_runs_with_float32_adapters():
    model = get_peft_model(task_model("bert").to(torch.bfloat16), TinyAttentionConfig(experts=2))
    adapter = getattr(tiny_attention_layers(model)[0], PREFIX)["default"]
    assert adapter.qkv_weight.dtype == torch.float32  # PEFT's autocast of adapter weights
    assert logits(model, tiny_batch()).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------ Trainer
def test_trainer_changes_only_adapter_and_head_parameters(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = get_peft_model(task_model("bert"), TinyAttentionConfig(experts=2, task_type="SEQ_CLS"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = tiny_batch(batch=16, length=9, seed=3)
    labels = torch.arange(16) % LABELS
    rows = [{k: v[i] for k, v in batch.items()} | {"labels": labels[i]} for i in range(16)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
    )
    Trainer(model=model, args=args, train_dataset=rows).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert any(f".{PREFIX}." in n for n in changed) and any("modules_to_save" in n for n in changed)
    assert all(f".{PREFIX}.default." in n or ".modules_to_save.default." in n for n in changed)


# ----------------------------------------------------------------------------- packaged backbone
def test_round_trip_on_the_packaged_minilm(tmp_path):
    def base():
        path = resolve_backbone("minilm-l6")
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()

    model = get_peft_model(base(), TinyAttentionConfig(experts=4, task_type="SEQ_CLS")).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        model.base_model.model.classifier.modules_to_save["default"].weight.normal_()
    for layer in tiny_attention_layers(model):
        randomise(getattr(layer, PREFIX)["default"])
    assert len(tiny_attention_layers(model)) == 6
    batch = tiny_batch(length=12)
    expected = logits(model, batch)
    model.save_pretrained(tmp_path)
    again = PeftModel.from_pretrained(base(), tmp_path).eval()
    torch.testing.assert_close(logits(again, batch), expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------- the quick-start page
@pytest.mark.e2e
def test_the_quickstart_notebook_runs_and_reloads_its_adapter_exactly(
    data_dir, tmp_path, monkeypatch
):
    """The book shows ``notebooks/peft_quickstart.ipynb`` with its stored outputs (it is not executed
    at build time, since it needs the data): this keeps it running, on a small slice."""
    papermill = pytest.importorskip("papermill")
    from pathlib import Path

    monkeypatch.setenv("TINYATTN_DATA_DIR", str(data_dir))
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "peft_quickstart.ipynb"
    out = tmp_path / "quickstart.ipynb"
    papermill.execute_notebook(
        str(notebook),
        str(out),
        parameters={
            "train_examples": 32,
            "eval_examples": 32,
            "max_length": 32,
            "output_dir": str(tmp_path / "adapter"),
        },
        cwd=str(tmp_path),
        progress_bar=False,
    )
    printed = "".join(
        "".join(o.get("text", ""))
        for c in json.loads(out.read_text())["cells"]
        for o in c.get("outputs", [])
    )
    assert "max |difference| of the logits: 0.0" in printed
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
