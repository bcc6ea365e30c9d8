"""Adapter-only save / load: exact logits on a fresh backbone, a clear error on another backbone."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import tiny_batch, tiny_encoder

from tinyattn.checkpoint import BackboneMismatchError, load_adapter, save_adapter
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
    assert keys and all(k.startswith(("tiny_attention.", "head.")) for k in keys)
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
    assert loaded.tiny_attention.config.experts == 1
    torch.testing.assert_close(loaded(**batch), model(**batch))


def test_two_stage_init_from_single_expert(tmp_path):
    single = trained(build_model("tinyattn", tiny_encoder("bert"), 2))
    save_adapter(single, tmp_path / "e1")
    many = build_model(
        "tinyattn",
        tiny_encoder("bert"),
        2,
        {"experts": 4, "init_from": str(tmp_path / "e1"), "init_noise_std": 0.0},
    )
    many.eval()
    batch = tiny_batch()
    torch.testing.assert_close(many(**batch), single(**batch))  # identical experts = the single one
    noisy = build_model(
        "tinyattn", tiny_encoder("bert"), 2, {"experts": 4, "init_from": str(tmp_path / "e1")}
    ).eval()
    torch.testing.assert_close(noisy(**batch), single(**batch), atol=1e-4, rtol=1e-3)
    assert not torch.equal(
        noisy.tiny_attention.layers[0].qkv_weight[0], noisy.tiny_attention.layers[0].qkv_weight[1]
    )


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tmp_path / "nothing")
