"""The cost benchmark: valid JSON in quick mode, sound memory accounting and FLOPs."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_batch, tiny_encoder
from torch import nn

from tinyattn.adapter import TinyAttention
from tinyattn.cli import main as cli
from tinyattn.inject import PREFIX
from tinyattn.measure import paired_ratio, quartiles, rotated, summary, training_memory_mb
from tinyattn.methods import METHODS, build_model
from tinyattn.model import DEFAULT_BACKBONE, load_encoder
from tinyattn.study.bench import (
    INFER_METHODS,
    SETUPS,
    TRAIN_METHODS,
    build,
    flops_per_token,
    random_batch,
    runs_table,
)


@pytest.mark.e2e
def test_quick_benchmark_emits_the_promised_json(capsys, tmp_path):
    assert cli(["bench", "--quick", "--json", "--out", str(tmp_path / "b.json")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "b.json").read_text()) == result
    for key in ("tinyattn_averaged", "tinyattn_e4", "lora_merged", "backbone"):
        assert result["inference_ratio"][key] > 0
    assert result["inference_ratio"]["backbone"] == 1.0
    for key in ("tinyattn_e1", "tinyattn_e4", "full_ft", "lora"):
        assert result["train_step_ratio"][key] > 0
    assert result["train_step_ratio"]["lora"] == 1.0
    assert set(result["peak_memory_mb"]) >= {"full_ft", "lora", "tinyattn_e1", "tinyattn_e4"}
    assert result["machine"]["processor"] and result["versions"]["torch"]
    paired = result["paired_inference_ratio"]
    assert paired["backbone"] == {"median": 1.0, "q1": 1.0, "q3": 1.0}
    assert paired["tinyattn_averaged"]["q1"] <= paired["tinyattn_averaged"]["q3"]
    assert set(result["paired_train_step_ratio"]) == set(result["train_step_ratio"])
    share = result["inference"]["16"]["tinyattn_averaged"]["adapter_share"]
    # the adapters take part of a pass (with two rounds, the quartiles extrapolate beyond the two values,
    # so only the median is bound to lie between 0 and 1)
    assert share["q1"] <= share["median"] <= share["q3"] and 0 < share["median"] < 1
    implied = result["share_inference_ratio"]["tinyattn_averaged"]["median"]
    assert implied == 1 / (1 - share["median"])
    assert result["weights"] == "pretrained"
    calls = result["inference_dispatch"]["16"]
    assert calls["lora_merged"]["aten_calls_per_pass"] == calls["backbone"]["aten_calls_per_pass"]
    assert (
        calls["tinyattn_averaged"]["aten_calls_per_pass"] > calls["backbone"]["aten_calls_per_pass"]
    )
    assert calls["backbone"]["kernels_per_pass"] == 0  # no GPU here

    # the table that compares runs across processes; an older run without the dispatch count still fits
    older = {k: v for k, v in result.items() if k != "inference_dispatch"}
    table = runs_table({"new": result, "old": older})
    assert table.loc["new", "averaged / backbone"] == paired["tinyattn_averaged"]["median"]
    assert table.loc["new", "batch × tokens"] == "2 × 16"
    assert table.loc["new", "kernels per pass, averaged"] == 0
    assert math.isnan(table.loc["old", "kernels per pass, averaged"])


def test_paired_ratio_divides_round_by_round():
    # B takes twice A's time in every round while the machine's speed drifts 10x across rounds
    rows = {"a": {"times_s": [1.0, 10.0, 3.0, 2.0]}, "b": {"times_s": [2.0, 20.0, 6.0, 4.0]}}
    assert paired_ratio(rows, "b", "a") == {"median": 2.0, "q1": 2.0, "q3": 2.0}


def test_memory_accounting_counts_gradients_and_optimizer_state():
    batch = tiny_batch()
    labels = torch.tensor([0, 1, 0])
    model = build_model("tinyattn", tiny_encoder("bert"), 2, {"experts": 2})
    memory = training_memory_mb(model, batch, labels)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) * 4 / 2**20
    assert memory["gradients_mb"] == trainable and memory["optimizer_mb"] == 2 * trainable
    assert memory["activations_mb"] > 0
    probe = training_memory_mb(build_model("head_only", tiny_encoder("bert"), 2), batch, labels)
    full = training_memory_mb(build_model("full_ft", tiny_encoder("bert"), 2), batch, labels)
    # a linear probe saves almost nothing for backward; full fine-tuning saves every layer's inputs
    assert probe["activations_mb"] < memory["activations_mb"] <= full["activations_mb"] * 1.5
    assert full["gradients_mb"] > memory["gradients_mb"]


def test_flops_per_token_of_minilm_by_hand():
    # MiniLM-L6: D = 384, 6 layers, FFN 1536. Per layer and token: q, k, v and output projections
    # (4 D² multiply-adds), the FFN (2 D·1536), attention scores and mixing over n = 128 tokens (2 n·D);
    # a multiply-add is 2 FLOPs: 2 · (589 824 + 1 179 648 + 98 304) = 3 735 552, × 6 layers.
    args = dict(hidden=384, layers=6, intermediate=1536, length=128)
    assert flops_per_token("backbone", **args) == 22_413_312
    # LoRA r = 8 on W_q and W_v: 2 modules × (D·8 + 8·D) multiply-adds = 12 288, × 2 FLOPs × 6 layers
    assert flops_per_token("lora", **args) == 22_413_312 + 6 * 2 * 12_288
    assert flops_per_token("lora_merged", **args) == 22_413_312  # folded into the weights
    # one tiny-attention expert (d = 1): q, k, v (3 D), scores and mixing (2 n), output (D)
    one = 2 * (3 * 384 + 2 * 128 + 384)
    assert flops_per_token("tinyattn_e1", **args) == 22_413_312 + 6 * one
    assert flops_per_token("tinyattn_e4", **args) == 22_413_312 + 6 * 4 * one
    assert flops_per_token("tinyattn_averaged", **args) == 22_413_312 + 6 * one


def _matmul_weights(model) -> int:
    """Weights that multiply every token in the encoder's layers: their Linear layers (the backbone's
    and those a library adds) and the tiny-attention adapters' q/k/v and output matrices."""
    linear = sum(
        m.weight.numel() for m in model.base_encoder.encoder.modules() if isinstance(m, nn.Linear)
    )
    adapters = getattr(model, PREFIX, None)
    tiny = sum(a.qkv_weight.numel() + a.out_weight.numel() for a in getattr(adapters, "layers", []))
    return linear + tiny


def test_flops_per_token_count_the_built_models_matrix_products():
    """The formula against the models themselves: 2 FLOPs per weight that multiplies a token, plus
    attention's scores and mixing, 2 n per head dimension: 4 n D for the backbone's heads and
    4 n d for each tiny-attention expert."""
    n, cfg = 11, tiny_encoder("bert").config
    D, layers = cfg.hidden_size, cfg.num_hidden_layers
    for name in ("backbone", "full_ft", "lora", "lora_merged", "houlsby", "pfeiffer"):
        model = build(SETUPS[name], tiny_encoder("bert"))
        expected = 2 * _matmul_weights(model) + layers * 4 * n * D
        assert flops_per_token(name, D, layers, cfg.intermediate_size, n) == expected, name
    for name, experts in (("tinyattn_e1", 1), ("tinyattn_e4", 4), ("tinyattn_averaged", 1)):
        model = build(SETUPS[name], tiny_encoder("bert"))
        expected = 2 * _matmul_weights(model) + layers * (4 * n * D + experts * 4 * n * 1)
        assert flops_per_token(name, D, layers, cfg.intermediate_size, n) == expected, name
    # prefix-tuning adds 30 keys and values that every query attends to: n + 30 keys in all
    args = dict(hidden=D, layers=layers, intermediate=cfg.intermediate_size)
    assert flops_per_token("prefix", length=n, **args) == flops_per_token(
        "backbone", length=n + 30, **args
    )
    # a wider head costs what the formula says: head_dim d scales the adapter's every term
    wide = flops_per_token("tinyattn_e1", length=n, options={"head_dim": 4}, **args)
    base = flops_per_token("backbone", length=n, **args)
    assert wide - base == 4 * (flops_per_token("tinyattn_e1", length=n, **args) - base)


def test_bench_setups_are_registered_methods():
    assert {s.method for s in SETUPS.values()} <= set(METHODS)
    assert set(TRAIN_METHODS) >= {"lora", "tinyattn_e4"} and "backbone" in INFER_METHODS


def test_timing_helpers():
    assert [k for k, _ in rotated({"a": 1, "b": 2, "c": 3}, 4)] == ["b", "c", "a"]
    assert quartiles([5.0]) == (5.0, 5.0, 5.0)
    row = summary([3.0, 1.0, 2.0])
    assert row["median_s"] == 2.0 and row["n"] == 3 and row["q1_s"] <= 2.0 <= row["q3_s"]


@pytest.mark.e2e
def test_tiny_attention_trains_in_less_memory_than_lora_on_the_packaged_backbone():
    # the efficiency target, at its sequence length (every saved activation scales with the batch)
    base = load_encoder(DEFAULT_BACKBONE)
    batch, labels = random_batch(8, 128, base.config.vocab_size), torch.zeros(8, dtype=torch.long)

    def memory(method: str, options: dict, recompute: bool = True) -> float:
        model = build_model(method, copy.deepcopy(base), 2, options).train()
        for layer in getattr(model, PREFIX, nn.Module()).modules():
            if isinstance(layer, TinyAttention):
                layer.recompute = recompute
        return training_memory_mb(model, batch, labels)["total_mb"]

    lora = memory("lora", {})
    assert memory("tinyattn", {}) < lora and memory("tinyattn", {"experts": 4}) < lora
    # what the default's recomputation saves: kept, four experts' attention maps cost more than LoRA
    assert memory("tinyattn", {"experts": 4}, recompute=False) > lora


def test_the_benchmark_files_have_one_reader_that_names_a_bad_file(tmp_path):
    from tinyattn.study.bench import BENCH_DIR, read_bench, read_benches

    bench_dir = Path(__file__).resolve().parents[1] / BENCH_DIR
    committed = read_bench(bench_dir / "cpu.json")
    assert committed["paired_inference_ratio"]["tinyattn_averaged"]["median"] > 0
    assert len(read_benches(bench_dir / "gpu")) >= 2  # one file per GPU run, by name
    with pytest.raises(ValueError, match="does not exist"):
        read_bench(tmp_path / "none.json")
    (tmp_path / "cut.json").write_text('{"machine": {')
    with pytest.raises(ValueError, match=r"cut.json: not valid JSON"):
        read_bench(tmp_path / "cut.json")
    (tmp_path / "cut.json").unlink()
    (tmp_path / "other.json").write_text('{"machine": {}, "versions": {}}')
    with pytest.raises(ValueError, match=r"other.json: not a benchmark \(no train_step_ratio"):
        read_benches(tmp_path)
