"""Placing adapters in BERT / RoBERTa / ALBERT encoders: placement, freezing, modes, counts."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_batch, tiny_encoder
from transformers import DistilBertConfig, DistilBertModel

from tinyattn.adapter import param_count
from tinyattn.inject import (
    PREFIX,
    TinyAttnConfig,
    add_tiny_attention,
    average_experts,
    expected_adapter_params,
    experts_averaged,
)
from tinyattn.methods import build_model
from tinyattn.model import EncoderClassifier, count_parameters


def with_adapters(kind="bert", **options):
    encoder = tiny_encoder(kind)
    encoder.config._attn_implementation = "eager"
    model = EncoderClassifier(encoder, 3)
    add_tiny_attention(model, **options)
    with torch.no_grad():  # make the adapters' effect large enough to see
        for layer in getattr(model, PREFIX).layers:
            layer.out_weight.normal_(0, 0.5)
            layer.out_bias.normal_(0, 0.5)
    return model.eval()


def hand_adapter(adapter, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The tiny-attention update written out from the adapter's weights: the mean over experts of
    LayerNorm -> q, k, v -> attention over the real tokens -> output Linear."""
    D, d = x.shape[-1], adapter.head_dim
    updates = []
    for e in range(adapter.experts):
        h = F.layer_norm(x, (D,), adapter.norm_weight[e], adapter.norm_bias[e])
        q, k, v = (h @ adapter.qkv_weight[e].T + adapter.qkv_bias[e]).split(d, dim=-1)
        scores = (q @ k.transpose(1, 2) / math.sqrt(d)).masked_fill(
            ~mask.bool()[:, None], -math.inf
        )
        updates.append(scores.softmax(-1) @ v @ adapter.out_weight[e].T + adapter.out_bias[e])
    return sum(updates) / len(updates)


def hand_self_attention(layer, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A BERT/RoBERTa self-attention sub-layer written out: heads, softmax, dense, residual, LayerNorm."""
    sa, out = layer.attention.self, layer.attention.output
    B, T, D = h.shape
    H = sa.num_attention_heads

    def heads(linear):  # (B, H, T, D / H)
        return F.linear(h, linear.weight, linear.bias).view(B, T, H, D // H).transpose(1, 2)

    q, k, v = heads(sa.query), heads(sa.key), heads(sa.value)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // H)
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], -math.inf)
    context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
    dense = F.linear(context, out.dense.weight, out.dense.bias)
    return F.layer_norm(
        dense + h, (D,), out.LayerNorm.weight, out.LayerNorm.bias, out.LayerNorm.eps
    )


def hand_ffn(layer, a: torch.Tensor) -> torch.Tensor:
    inner = F.gelu(F.linear(a, layer.intermediate.dense.weight, layer.intermediate.dense.bias))
    out = layer.output
    dense = F.linear(inner, out.dense.weight, out.dense.bias)
    return F.layer_norm(
        dense + a, a.shape[-1:], out.LayerNorm.weight, out.LayerNorm.bias, out.LayerNorm.eps
    )


def manual_bert_forward(model: EncoderClassifier, batch: dict) -> torch.Tensor:
    """The encoder written out layer by layer, with the adapter placed as the method says:
    ``after_attention`` reads and updates the attention sub-layer's output; ``parallel_attention``
    reads the layer's input and updates the attention sub-layer's output."""
    enc, adapters = model.encoder, getattr(model, PREFIX)
    mask = batch["attention_mask"]
    h = enc.embeddings(input_ids=batch["input_ids"])
    for layer, adapter in zip(enc.encoder.layer, adapters.layers):
        attended = hand_self_attention(layer, h, mask)
        source = attended if adapters.config.placement == "after_attention" else h
        h = hand_ffn(layer, attended + hand_adapter(adapter, source, mask))
    return h


@pytest.mark.parametrize("placement", ["after_attention", "parallel_attention"])
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_placement_matches_hand_written_forward(kind, placement):
    model = with_adapters(kind, placement=placement, experts=2)
    batch = tiny_batch()
    got = model.encoder(**batch).last_hidden_state
    with torch.no_grad():
        want = manual_bert_forward(model, batch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    bare = copy.deepcopy(model)  # the adapters really take part
    getattr(bare, PREFIX).detach_hooks()
    assert not torch.allclose(bare.encoder(**batch).last_hidden_state, want, atol=1e-3)


def test_placements_differ_and_adapter_changes_output():
    batch = tiny_batch()
    outputs = []
    for placement in ("after_attention", "parallel_attention"):
        torch.manual_seed(0)
        outputs.append(with_adapters(placement=placement)(**batch))
    assert not torch.allclose(*outputs)


def test_zero_update_leaves_backbone_function_unchanged():
    encoder = tiny_encoder("roberta")
    model = EncoderClassifier(encoder, 2).eval()
    batch = tiny_batch()
    before = model(**batch)
    add_tiny_attention(model, out_scale=0.0, experts=3)
    model.eval()
    torch.testing.assert_close(model(**batch), before)


def test_padding_mask_reaches_the_adapters():
    """Padded positions must not influence real tokens through the adapter either."""
    model = with_adapters("bert")
    batch = tiny_batch()
    other = {k: v.clone() for k, v in batch.items()}
    other["input_ids"][1, -1] = 7  # a padded position (row 1 is padded over its last 2 tokens)
    torch.testing.assert_close(model(**batch), model(**other))


def test_albert_gets_one_shared_adapter():
    encoder = tiny_encoder("albert")
    model = EncoderClassifier(encoder, 2)
    adapters = add_tiny_attention(model)
    assert len(adapters.layers) == 1
    assert count_parameters(model)["adapter_params"] == param_count(32)
    calls = []
    adapters.layers[0].register_forward_hook(lambda *a: calls.append(1))
    model(**tiny_batch())
    assert len(calls) == encoder.config.num_hidden_layers  # the shared adapter runs at every depth


def test_unsupported_architecture_is_named():
    cfg = DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=37)
    model = EncoderClassifier(DistilBertModel(cfg), 2)
    with pytest.raises(NotImplementedError, match="distilbert"):
        add_tiny_attention(model)


def test_unknown_placement_is_named():
    with pytest.raises(ValueError, match="placement"):
        TinyAttnConfig(placement="before_ffn")
    with pytest.raises(ValueError, match="unknown tiny-attention options"):
        TinyAttnConfig.from_dict({"heads": 4})


def test_only_adapters_and_head_train_and_backbone_stays_in_eval_mode():
    model = with_adapters("bert", experts=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith((f"{PREFIX}.", "head.")) for n in trainable)
    assert {"head.weight", "head.bias"} <= trainable
    model.train()
    assert not any(m.training for m in model.encoder.modules())  # dropout off in the backbone
    assert getattr(model, PREFIX).training and model.head.training and model.dropout.training


def test_training_changes_only_adapters_and_head():
    model = with_adapters("bert")
    frozen = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(3):
        logits = model(**tiny_batch(seed=step))
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
        optim.step()
        optim.zero_grad()
    for name, param in model.encoder.named_parameters():
        assert torch.equal(param, frozen[name]), name
    for name, param in model.named_parameters():
        if name in trained:
            assert not torch.equal(param, trained[name]), f"{name} did not change"


def test_out_init_survives_from_pretrained(tmp_path):
    """Building from a saved checkpoint (from_pretrained) keeps the x0.01 output initialisation."""
    tiny_encoder("bert").save_pretrained(tmp_path / "backbone")
    model = build_model("tinyattn", str(tmp_path / "backbone"), 2)
    bound = 0.01 / math.sqrt(1)  # 0.01 x nn.Linear(1, D)'s uniform bound
    for layer in getattr(model, PREFIX).layers:
        assert 0 < layer.out_weight.abs().max() <= bound
        assert 0.3 * bound < layer.out_weight.abs().max()  # scaled, not zeroed
        assert torch.equal(layer.norm_weight, torch.ones_like(layer.norm_weight))


@pytest.mark.parametrize("placement", ["after_attention", "parallel_attention"])
@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_copied_model_uses_its_own_adapters(placement, clone):
    """A deep copy (or a pickled copy) runs its own adapters; changing or detaching them leaves the
    original alone."""
    model = with_adapters("bert", placement=placement)
    batch = tiny_batch()
    before = model(**batch)
    twin = clone(model)
    torch.testing.assert_close(twin(**batch), before)
    with torch.no_grad():
        for layer in getattr(twin, PREFIX).layers:
            layer.out_bias.add_(1.0)
    changed = twin(**batch)
    assert not torch.allclose(changed, before)
    torch.testing.assert_close(model(**batch), before)
    getattr(twin, PREFIX).detach_hooks()
    torch.testing.assert_close(model(**batch), before)
    assert not torch.allclose(twin(**batch), changed)  # the twin's own hooks were the ones removed


def test_experts_averaged_context_restores_experts():
    model = with_adapters("bert", experts=4)
    batch = tiny_batch()
    before = model(**batch)
    with experts_averaged(model):
        assert getattr(model, PREFIX).config.experts == 1
        averaged = model(**batch)
    assert getattr(model, PREFIX).config.experts == 4
    torch.testing.assert_close(model(**batch), before)
    assert not torch.allclose(averaged, before)
    average_experts(model)
    torch.testing.assert_close(model(**batch), averaged)


@pytest.mark.parametrize("experts", [1, 4])
def test_counts_on_packaged_backbone_match_formula(fresh_minilm, experts):
    model = build_model("tinyattn", fresh_minilm, 2, {"experts": experts})
    counts = count_parameters(model)
    D, L = 384, 6
    assert counts["adapter_params"] == L * experts * (7 * D + 3)
    assert counts["adapter_params"] == expected_adapter_params(
        fresh_minilm, getattr(model, PREFIX).config
    )
    assert counts["head_params"] == D * 2 + 2
    assert counts["backbone_params"] == sum(p.numel() for p in fresh_minilm.parameters())
    assert counts["trainable_params"] == counts["adapter_params"] + counts["head_params"]
    assert counts["total_params"] == counts["backbone_params"] + counts["trainable_params"]
    assert counts["trainable_percent"] == pytest.approx(
        100 * counts["trainable_params"] / counts["total_params"]
    )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"head_dim": 0}, "head_dim"),
        ({"experts": 0}, "experts"),
        ({"placement": "ffn"}, "placement"),
    ],
)
def test_bad_method_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        build_model("tinyattn", tiny_encoder("bert"), 2, options)


def test_a_batch_without_padding_attends_without_a_mask():
    model = with_adapters("bert", experts=2)
    batch = tiny_batch()
    whole = {k: v[:1] for k, v in batch.items()}  # the first row has no padding
    assert whole["attention_mask"].all()
    got = model.encoder(**whole).last_hidden_state
    assert getattr(model, PREFIX)._padding_mask is None  # the adapters got no mask ...
    want = manual_bert_forward(model, whole)  # ... and compute what they compute with one
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    model.encoder(**batch)
    assert getattr(model, PREFIX)._padding_mask is not None  # a padded batch keeps its mask
