"""Every registered method on tiny random BERT and RoBERTa encoders (built from configs, nothing
downloaded): what trains, what one optimiser step changes, parameter counts against the libraries'
own counts, save -> load, option handling and the backbone-dropout rule."""

from __future__ import annotations

import copy
import re
import sys

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

from tinyattn.checkpoint import load_adapter, save_adapter
from tinyattn.cli import main as cli
from tinyattn.inject import PREFIX, TinyAttnConfig, expected_adapter_params
from tinyattn.methods import (
    METHODS,
    RETIRED_OPTIONS,
    build_model,
    library_adapter_params,
    method_options,
)
from tinyattn.model import _is_added_parameter, count_parameters

H, LAYERS, FFN, LABELS = 32, 2, 37, 3
TINY = dict(
    vocab_size=100,
    hidden_size=H,
    num_hidden_layers=LAYERS,
    num_attention_heads=2,
    intermediate_size=FFN,
    max_position_embeddings=64,
)
ARCHS = ("bert", "roberta")
ALL_METHODS = (
    "tinyattn",
    "full_ft",
    "head_only",
    "bitfit",
    "lora",
    "ia3",
    "prefix",
    "houlsby",
    "pfeiffer",
    "parallel",
)
PEFT_METHODS = {"lora", "ia3"}
ADAPTERS_METHODS = {"prefix", "houlsby", "pfeiffer", "parallel"}
#: methods whose forward is random in train mode with head dropout 0: full fine-tuning (backbone
#: dropout on) and tiny attention (its adapter's own dropout, 0.1 by default, lives outside the encoder)
STOCHASTIC_IN_TRAINING = {"full_ft", "tinyattn"}

# Which parameters (named as in ``model.named_parameters()``) must train, besides the head.
TRAINS = {
    "tinyattn": lambda n: n.startswith(f"{PREFIX}."),
    "full_ft": lambda n: True,
    "head_only": lambda n: False,
    "bitfit": lambda n: n.startswith("encoder.") and n.endswith("bias"),
    "lora": lambda n: re.search(
        r"\.attention\.self\.(query|value)\.lora_[AB]\.default\.weight$", n
    ),
    # (IA)^3: keys, values and the FFN's second linear layer, not the attention output projection
    "ia3": lambda n: re.search(
        r"\.layer\.\d+\.(attention\.self\.key|attention\.self\.value|output\.dense)\.ia3_l\.default$",
        n,
    ),
    "prefix": lambda n: ".prefix_tuning.pool.prefix_tunings.prefix." in n,
    "houlsby": lambda n: re.search(
        r"\.layer\.\d+\.(attention\.output|output)\.adapters\.houlsby\.", n
    ),
    "pfeiffer": lambda n: re.search(r"\.layer\.\d+\.output\.adapters\.pfeiffer\.", n),
    "parallel": lambda n: re.search(r"\.layer\.\d+\.output\.adapters\.parallel\.", n),
}


def _bottleneck(reduction_factor: int) -> int:  # one adapter: down (with bias) + up (with bias)
    d = H // reduction_factor
    return H * d + d + d * H + H


def _prefix(length: int, bottleneck: int = 512) -> int:  # embedding -> MLP -> 2 x layers x H
    return (
        length * H + (H * bottleneck + bottleneck) + (bottleneck * 2 * LAYERS * H + 2 * LAYERS * H)
    )


def _bias_count(encoder: nn.Module, suffixes=("bias",)) -> int:
    return sum(p.numel() for n, p in encoder.named_parameters() if n.endswith(tuple(suffixes)))


# The adapter-only parameter count each method must have on the tiny encoders, from its formula.
EXPECTED_ADAPTER_PARAMS = {
    "tinyattn": lambda enc: expected_adapter_params(enc, TinyAttnConfig()),
    "full_ft": lambda enc: sum(p.numel() for p in enc.parameters()),
    "head_only": lambda enc: 0,
    "bitfit": _bias_count,
    "lora": lambda enc: LAYERS * 2 * (8 * H + H * 8),  # r = 8 on query and value
    "ia3": lambda enc: LAYERS * (H + H + FFN),  # l_k, l_v, l_ff
    "prefix": lambda enc: _prefix(30),
    "houlsby": lambda enc: LAYERS * 2 * _bottleneck(16),
    "pfeiffer": lambda enc: LAYERS * _bottleneck(16),
    "parallel": lambda enc: LAYERS * _bottleneck(2),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoders() -> dict[str, nn.Module]:
    """Pristine tiny encoders; every test builds its model from a deep copy."""
    torch.manual_seed(0)
    bert = BertModel(BertConfig(**TINY), add_pooling_layer=False)
    torch.manual_seed(1)
    roberta = RobertaModel(RobertaConfig(pad_token_id=1, **TINY), add_pooling_layer=False)
    return {"bert": bert.eval(), "roberta": roberta.eval()}


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, TINY["vocab_size"], (4, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0  # some padding
    attention_mask[3, 4:] = 0
    labels = torch.randint(0, LABELS, (4,), generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _build(method, encoders, arch, options=None, **kwargs):
    return build_model(method, copy.deepcopy(encoders[arch]), LABELS, options, **kwargs)


def _logits(model, batch):
    return model(batch["input_ids"], batch["attention_mask"])


def _train_step(model, batch, optimiser=None):
    model.train()
    if optimiser is None:
        optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = nn.functional.cross_entropy(_logits(model, batch), batch["labels"])
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return optimiser


def _backbone_dropouts(model) -> list[nn.Module]:
    return [
        m
        for name, m in model.base_encoder.named_modules()
        if isinstance(m, nn.Dropout) and not _is_added_parameter(name)
    ]


matrix = pytest.mark.parametrize(
    "method,arch", [(m, a) for m in ALL_METHODS for a in ARCHS], ids=lambda x: x
)


def test_registry_has_every_method_documented():
    """Every registered method is in this file's matrix (a new one must say what it trains in
    ``TRAINS``), and documents its defaults' source."""
    assert set(METHODS) == set(ALL_METHODS) == set(TRAINS), (
        "add the method to ALL_METHODS and TRAINS"
    )
    for name in ALL_METHODS:
        spec = METHODS[name]
        assert spec.source and spec.description, name


@matrix
def test_only_the_intended_parameters_train(method, arch, encoders):
    model = _build(method, encoders, arch)
    wrong = [
        (name, param.requires_grad)
        for name, param in model.named_parameters()
        if param.requires_grad != bool(name.startswith("head.") or TRAINS[method](name))
    ]
    assert not wrong, wrong[:5]
    assert all(p.requires_grad for p in model.head.parameters())
    adapter = [
        n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")
    ]
    assert bool(adapter) == (method != "head_only")
    assert isinstance(model.base_encoder, type(encoders[arch]))  # beneath any library wrapper
    if method == "houlsby":  # after the attention and after the FFN sub-layer of every layer
        assert any(".attention.output.adapters." in n for n in adapter)
        assert any(".attention.output.adapters." not in n for n in adapter)
    if method == "ia3":  # three vectors per layer
        assert len(adapter) == 3 * LAYERS


@matrix
def test_training_changes_exactly_the_trainable_parameters(method, arch, encoders, batch):
    """One step leaves every frozen parameter bit-identical; two steps move every trainable one.

    Two, because a zero-initialised branch (LoRA's B, the parallel adapter's up-projection) gives
    the matrix before it no gradient in the first step. Seeded: a bottleneck unit that the
    initialisation leaves dead would move nothing, so the draws must not depend on the tests before.
    """
    torch.manual_seed(0)
    model = _build(method, encoders, arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    params = dict(model.named_parameters())
    optimiser = None
    for step in (1, 2):
        optimiser = _train_step(model, batch, optimiser)
        assert all(params[n].grad is not None for n in trainable)  # all in the graph
        assert all(p.grad is None for n, p in params.items() if n not in trainable)
        changed = {n for n, p in params.items() if not torch.equal(p.detach(), before[n])}
        assert changed <= trainable, sorted(changed - trainable)[:5]
        assert changed, f"step {step} changed nothing"
    assert changed == trainable, sorted(trainable - changed)[:5]


@matrix
def test_parameter_counts_agree_with_the_libraries(method, arch, encoders):
    plain = encoders[arch]
    plain_count = sum(p.numel() for p in plain.parameters())
    model = _build(method, encoders, arch)
    counts = count_parameters(model)
    assert counts["backbone_params"] == plain_count
    assert counts["head_params"] == H * LABELS + LABELS
    assert counts["adapter_params"] == EXPECTED_ADAPTER_PARAMS[method](plain)
    assert counts["trainable_params"] == counts["adapter_params"] + counts["head_params"]
    if method in ("full_ft", "bitfit"):  # everything that trains is in the backbone (or the head)
        assert counts["total_params"] == plain_count + counts["head_params"]
    else:
        assert counts["total_params"] == plain_count + counts["trainable_params"]
    if method in PEFT_METHODS:
        trainable, everything = model.encoder.get_nb_trainable_parameters()
        assert trainable == counts["adapter_params"]
        assert everything - trainable == counts["backbone_params"]
    elif method in ADAPTERS_METHODS:
        rows = {row["name"]: row for row in model.encoder.adapter_summary(as_dict=True)}
        assert rows[method]["#param"] == counts["adapter_params"]
        assert rows[method]["active"] and rows[method]["train"]
        assert rows["Full model"]["#param"] == counts["backbone_params"]
    if method in PEFT_METHODS | ADAPTERS_METHODS:
        assert library_adapter_params(model) == counts["adapter_params"]
    else:
        assert library_adapter_params(model) is None


@pytest.mark.parametrize(
    "method,options,expected",
    [
        ("lora", {"r": 4}, LAYERS * 2 * (4 * H + H * 4)),
        ("lora", {"target_modules": ["query", "key", "value"]}, LAYERS * 3 * (8 * H + H * 8)),
        ("ia3", {"target_modules": ["key", "value"], "feedforward_modules": []}, LAYERS * 2 * H),
        ("prefix", {"prefix_length": 5, "bottleneck_size": 16}, _prefix(5, 16)),
        ("prefix", {"prefix_length": 5, "flat": True}, 5 * 2 * LAYERS * H),
        ("houlsby", {"reduction_factor": 4}, LAYERS * 2 * _bottleneck(4)),
        ("pfeiffer", {"reduction_factor": 4}, LAYERS * _bottleneck(4)),
        ("parallel", {"reduction_factor": 4}, LAYERS * _bottleneck(4)),
        ("bitfit", {"bias_terms": ["query", "value"]}, LAYERS * 2 * H),
        ("tinyattn", {"head_dim": 2}, None),
    ],
    ids=lambda x: str(x),
)
def test_options_override_the_defaults(method, options, expected, encoders):
    model = _build(method, encoders, "bert", options)
    assert model.method_options == {**METHODS[method].defaults, **options}
    if expected is None:
        expected = expected_adapter_params(encoders["bert"], TinyAttnConfig(head_dim=2))
    assert count_parameters(model)["adapter_params"] == expected
    assert expected != EXPECTED_ADAPTER_PARAMS[method](encoders["bert"])
    if method in PEFT_METHODS | ADAPTERS_METHODS:
        assert library_adapter_params(model) == expected


@pytest.mark.parametrize(
    "method,arch", [(m, a) for m in ALL_METHODS for a in ARCHS], ids=lambda x: x
)
def test_save_load_reproduces_the_logits(method, arch, encoders, batch, tmp_path):
    model = _build(method, encoders, arch)
    _train_step(model, batch)
    model.eval()
    with torch.no_grad():
        expected = _logits(model, batch)
        untrained = _build(method, encoders, arch).eval()
        assert not torch.equal(_logits(untrained, batch), expected)  # the step did change the model
    save_adapter(model, tmp_path / "adapter")
    loaded = load_adapter(tmp_path / "adapter", backbone=copy.deepcopy(encoders[arch]))
    assert loaded.method == method and loaded.method_options == model.method_options
    assert count_parameters(loaded) == count_parameters(model)
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(_logits(loaded, batch), expected)


def test_unknown_method_is_an_error(encoders):
    with pytest.raises(ValueError, match="no_such_method"):
        _build("no_such_method", encoders, "bert")


@pytest.mark.parametrize("method", ALL_METHODS)
def test_unknown_option_is_an_error(method, encoders):
    with pytest.raises(ValueError, match=rf"(?s){method}.*no_such_option"):
        _build(method, encoders, "bert", {"no_such_option": 1})


def test_bad_option_values_are_errors(encoders):
    with pytest.raises(ValueError, match="nonsense"):
        _build("bitfit", encoders, "bert", {"bias_terms": ["nonsense"]})


@matrix
def test_backbone_dropout_only_for_full_fine_tuning(method, arch, encoders, batch):
    model = _build(method, encoders, arch, head_dropout=0.0)
    full = method == "full_ft"
    assert model.backbone_dropout is full
    model.train()
    dropouts = _backbone_dropouts(model)
    assert dropouts
    assert all(m.training is full for m in dropouts)
    first, second = _logits(model, batch), _logits(model, batch)
    assert all(m.training is full for m in dropouts)  # a forward does not switch them on
    assert torch.equal(first, second) is (method not in STOCHASTIC_IN_TRAINING)
    model.eval()
    with torch.no_grad():
        assert torch.equal(_logits(model, batch), _logits(model, batch))


def test_adapter_internal_dropout_follows_training(encoders, batch):
    """LoRA's dropout sits inside the frozen (eval-mode) encoder, yet is on while the model trains."""
    model = _build("lora", encoders, "bert", {"lora_dropout": 0.5}, head_dropout=0.0)
    with torch.no_grad():  # LoRA's B starts at zero, which would hide the dropout
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=1.0)
    lora_dropouts = [m for n, m in model.named_modules() if "lora_dropout.default" in n]
    assert lora_dropouts
    model.train()
    first, second = _logits(model, batch), _logits(model, batch)
    assert not torch.equal(first, second)
    assert all(m.training for m in lora_dropouts)
    assert not any(m.training for m in _backbone_dropouts(model))
    model.eval()
    with torch.no_grad():
        assert torch.equal(_logits(model, batch), _logits(model, batch))
    assert not any(m.training for m in lora_dropouts)


def test_retired_options_are_dropped_at_their_value_and_refused_otherwise():
    """tinyattn's two-stage start is a step of the run now, not an option; records still carry the
    options at these values (and the run id hashes them), so they are accepted there only."""
    assert RETIRED_OPTIONS == {"tinyattn": {"init_from": None, "init_noise_std": 1e-6}}
    options = method_options("tinyattn", {"experts": 4, "init_from": None, "init_noise_std": 1e-6})
    assert options == {**TinyAttnConfig(experts=4).to_dict()}
    with pytest.raises(ValueError, match="init_from is no longer an option.*two_stage"):
        method_options("tinyattn", {"init_from": "results/runs/adapters/x"})
    with pytest.raises(ValueError, match="init_noise_std"):
        method_options("tinyattn", {"init_noise_std": 1e-3})


def test_build_model_reads_no_files(encoders, monkeypatch):
    """Building any method's model touches no checkpoint: initialisation from files is a later step."""
    import builtins

    def refuse(*args, **kwargs):
        raise AssertionError(f"build_model opened {args[0]!r}")

    monkeypatch.setattr(builtins, "open", refuse)
    model = _build("tinyattn", encoders, "bert", {"experts": 4})
    assert getattr(model, PREFIX).config.experts == 4


def test_unknown_backbone_is_one_line_error(capsys, monkeypatch):
    """``tinyattn params --backbone nope-model-xyz``: a one-line error naming the backbone."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli(["params", "--backbone", "nope-model-xyz"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "backbone 'nope-model-xyz' not found" in err and "Hub" in err


def test_adapters_methods_name_the_extra_to_install_when_it_is_missing(encoders, monkeypatch):
    monkeypatch.setitem(sys.modules, "adapters", None)  # `import adapters` now raises ImportError
    for method in sorted(ADAPTERS_METHODS):
        with pytest.raises(ValueError, match=rf"'{method}'.*pip install 'tinyattn\[adapters\]'"):
            _build(method, encoders, "bert")
    assert _build("lora", encoders, "bert") is not None  # peft's methods do not need it


def test_each_methods_facts_live_in_its_registry_entry():
    """Planning speed, FLOPs formula and retired options come from the entry, not from lists kept
    elsewhere: a method registered without a speed plans at the default, and the benchmark's FLOPs
    are the entry's formula."""
    from tinyattn.experiment import RunParams
    from tinyattn.registry import METHODS, register
    from tinyattn.study import bench
    from tinyattn.study.profiles import DEFAULT_TRAIN_TOKENS_PER_SECOND, estimate_seconds

    assert all(m.train_tokens_per_second for m in METHODS.values())
    assert all(METHODS[s.method].flops for s in bench.SETUPS.values())
    params = RunParams(task="rte", method="lora", seed=1, epochs=1)
    fast = estimate_seconds(params)
    try:
        register("slowpoke", defaults=METHODS["lora"].defaults)(METHODS["lora"].apply)
        slow = estimate_seconds(RunParams(task="rte", method="slowpoke", seed=1, epochs=1))
    finally:
        METHODS.pop("slowpoke")
    assert slow > fast and DEFAULT_TRAIN_TOKENS_PER_SECOND < METHODS["lora"].train_tokens_per_second
    tiny = bench.Setup("tinyattn", {"experts": 4})
    opts = method_options("tinyattn", {"experts": 4})
    per_expert = 2 * 3 * 384 + 4 * 64 + 2 * 384
    assert bench._adapter_flops(tiny, opts, 384, 64) == 4 * per_expert
    averaged = bench.Setup("tinyattn", {"experts": 4}, form="averaged")
    assert bench._adapter_flops(averaged, opts, 384, 64) == per_expert


def test_the_added_parameter_markers_live_in_each_methods_registry_entry(monkeypatch):
    from tinyattn import registry

    assert registry.METHODS["lora"].markers == ("lora_",)
    assert "adapters." in registry.METHODS["pfeiffer"].markers
    assert not registry.METHODS["full_ft"].markers  # it adds nothing inside the encoder
    name = "encoder.layer.0.attention.self.query.shiny_A.weight"
    assert not _is_added_parameter(name)
    monkeypatch.setitem(
        registry.METHODS, "shiny", registry.Method("shiny", None, markers=("shiny_",))
    )
    assert _is_added_parameter(name)  # a new method's markers need no edit outside its entry
