"""Adapter-only save / load: exact logits on a fresh backbone, clear errors on another backbone or a
damaged file; and the experts' two-stage start from a saved one-expert twin."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import tiny_batch, tiny_encoder

from tinyattn.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    BackboneMismatchError,
    load_adapter,
    save_adapter,
    start_experts_from,
    trainable_state,
)
from tinyattn.inject import PREFIX
from tinyattn.methods import build_model


def trained(model, steps=2):
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(steps):
        loss = model(**tiny_batch(seed=step)).logsumexp(-1).mean()
        loss.backward()
        optim.step()
        optim.zero_grad()
    return model.eval()


@pytest.mark.parametrize("options", [{}, {"experts": 4, "placement": "parallel_attention"}])
def test_round_trip_reproduces_logits(tmp_path, options):
    fresh = tiny_encoder("bert")
    model = trained(build_model("tinyattn", copy.deepcopy(fresh), 3, options))
    batch = tiny_batch()
    want = model(**batch)
    save_adapter(model, tmp_path / "ad")
    saved = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert saved["backbone"]["model_type"] == "bert" and saved["num_labels"] == 3
    # only adapter + head weights are stored
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "ad" / "adapter.safetensors")).keys()
    assert keys and all(k.startswith((f"{PREFIX}.", "head.")) for k in keys)
    loaded = load_adapter(tmp_path / "ad", backbone=copy.deepcopy(fresh)).eval()
    assert torch.equal(loaded(**batch), want)


def test_loading_into_another_backbone_fails_clearly(tmp_path):
    model = build_model("tinyattn", tiny_encoder("bert", seed=0), 2)
    save_adapter(model, tmp_path / "ad")
    with pytest.raises(BackboneMismatchError, match="embedding_sha256"):
        load_adapter(
            tmp_path / "ad", backbone=tiny_encoder("bert", seed=1)
        )  # same shape, other weights
    with pytest.raises(BackboneMismatchError, match="model_type"):
        load_adapter(tmp_path / "ad", backbone=tiny_encoder("roberta"))


def test_averaged_model_saves_as_single_expert(tmp_path):
    from tinyattn.inject import average_experts

    model = trained(build_model("tinyattn", tiny_encoder("bert"), 2, {"experts": 4}))
    average_experts(model)
    batch = tiny_batch()
    save_adapter(model, tmp_path / "deployed")
    loaded = load_adapter(tmp_path / "deployed", backbone=tiny_encoder("bert")).eval()
    assert getattr(loaded, PREFIX).config.experts == 1
    torch.testing.assert_close(loaded(**batch), model(**batch))


def test_experts_start_as_noisy_copies_of_the_saved_twin(tmp_path):
    """The authors' recipe: E copies of the trained single expert, N(0, std^2) on q/k/v only, drawn
    from a generator seeded with 0 (q/k/v weights, then biases, layer by layer); the twin's head."""
    single = trained(build_model("tinyattn", tiny_encoder("bert"), 2))
    save_adapter(single, tmp_path / "e1")
    many = build_model("tinyattn", tiny_encoder("bert"), 2, {"experts": 4})
    assert start_experts_from(many, tmp_path / "e1", noise_std=1e-3) is many
    gen = torch.Generator().manual_seed(0)
    for ours, theirs in zip(getattr(many, PREFIX).layers, getattr(single, PREFIX).layers):
        for name in (
            "qkv_weight",
            "qkv_bias",
            "norm_weight",
            "norm_bias",
            "out_weight",
            "out_bias",
        ):
            want = getattr(theirs, name).detach().expand(4, *getattr(theirs, name).shape[1:])
            if name.startswith("qkv"):  # the noise, drawn in the recipe's order
                want = want + torch.randn(want.shape, generator=gen) * 1e-3
            assert torch.equal(getattr(ours, name), want), name
    assert torch.equal(many.head.weight, single.head.weight)
    assert torch.equal(many.head.bias, single.head.bias)


def test_noise_free_copies_compute_the_twin(tmp_path):
    single = trained(build_model("tinyattn", tiny_encoder("bert"), 2))
    many = build_model("tinyattn", tiny_encoder("bert"), 2, {"experts": 4})
    start_experts_from(many, trainable_state(single), noise_std=0.0)  # from weights in memory
    batch = tiny_batch()
    torch.testing.assert_close(many.eval()(**batch), single(**batch))  # identical experts
    start_experts_from(many, trainable_state(single))  # the default noise, 1e-6: nearly the twin
    torch.testing.assert_close(many(**batch), single(**batch), atol=1e-4, rtol=1e-3)
    layer = getattr(many, PREFIX).layers[0]
    assert not torch.equal(layer.qkv_weight[0], layer.qkv_weight[1])


def test_experts_start_only_from_a_fitting_twin(tmp_path):
    model = build_model("tinyattn", tiny_encoder("bert"), 2, {"experts": 2})
    save_adapter(model, tmp_path / "e2")
    with pytest.raises(ValueError, match="one-expert"):
        start_experts_from(
            build_model("tinyattn", tiny_encoder("bert"), 2, {"experts": 4}), tmp_path / "e2"
        )
    save_adapter(build_model("tinyattn", tiny_encoder("bert"), 2, {"head_dim": 2}), tmp_path / "d2")
    with pytest.raises(ValueError, match="head_dim"):
        start_experts_from(
            build_model("tinyattn", tiny_encoder("bert"), 2, {"experts": 4}), tmp_path / "d2"
        )
    with pytest.raises(FileNotFoundError, match="nothing"):
        start_experts_from(model, tmp_path / "nothing")
    with pytest.raises(ValueError, match="no tiny-attention adapters"):
        start_experts_from(build_model("lora", tiny_encoder("bert"), 2), tmp_path / "e2")


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tmp_path / "nothing")


def test_damaged_weights_file_is_named(tmp_path):
    save_adapter(build_model("tinyattn", tiny_encoder("bert"), 2), tmp_path / "ad")
    weights = tmp_path / "ad" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])  # an interrupted copy
    with pytest.raises(ValueError, match=f"{WEIGHTS_FILE}.*damaged or incomplete"):
        load_adapter(tmp_path / "ad", backbone=tiny_encoder("bert"))
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_adapter(tmp_path / "ad", backbone=tiny_encoder("bert"))


def test_adapters_saved_with_the_retired_options_still_load(tmp_path):
    """Adapters saved before two-stage initialisation became a step name init_from in their options."""
    model = trained(build_model("tinyattn", tiny_encoder("bert"), 2, {"experts": 4}))
    save_adapter(model, tmp_path / "old")
    path = tmp_path / "old" / CONFIG_FILE
    config = json.loads(path.read_text())
    config["options"].update(init_from="results/runs/adapters/twin", init_noise_std=1e-6)
    path.write_text(json.dumps(config))
    loaded = load_adapter(tmp_path / "old", backbone=tiny_encoder("bert")).eval()
    assert "init_from" not in loaded.method_options
    batch = tiny_batch()
    torch.testing.assert_close(loaded(**batch), model(**batch))
