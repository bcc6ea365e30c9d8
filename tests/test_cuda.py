"""The GPU code paths, on a GPU: the adapter on CUDA against the CPU and against its plain definition
(padded heads, fused attention, cached folded weights), every method's forward and training step, a whole two-stage run trained on
the GPU against the same run on the CPU, its adapter reloaded on the CPU, and bf16 mixed precision.

Skipped where there is no CUDA device (as in CI, which has none). On a GPU machine or in Colab:
``pytest tests/test_cuda.py``. ``TINYATTN_TEST_DEVICE=cpu`` runs the same code with the CPU standing in
for the GPU, to check the tests themselves on a machine without one. Nothing is downloaded: the backbone is a small random BERT saved to a
folder with a word-level vocabulary, and the data a synthetic SST-2 folder.
"""

from __future__ import annotations

import copy
import os
import random

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import tiny_batch, tiny_encoder
from transformers import BertConfig, BertModel, BertTokenizerFast

from tinyattn.adapter import TinyAttention
from tinyattn.checkpoint import load_adapter
from tinyattn.experiment import RunParams, run
from tinyattn.fastpath import FastTinyAttention
from tinyattn.methods import METHODS, build_model

CUDA = torch.device(os.environ.get("TINYATTN_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(
    CUDA.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"
)


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 matmuls would put CUDA about 1e-3 away from the CPU; compare in true float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state (device, precision); each run here sets its own."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def close(actual, expected, atol=2e-5, rtol=1e-4):
    torch.testing.assert_close(actual.detach().cpu(), expected.detach().cpu(), atol=atol, rtol=rtol)


# ------------------------------------------------------------------ the adapter module


def forward_backward(module: TinyAttention, x: torch.Tensor, mask: torch.Tensor, weights):
    """Output and gradients of a masked weighted sum (padded positions do not reach the loss)."""
    device = next(module.parameters()).device
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().to(device).requires_grad_(True)
    mask = mask.to(device)
    out = module(x, mask)
    (out * weights.to(device) * mask[..., None]).sum().backward()
    grads = {n: p.grad for n, p in module.named_parameters()}
    return out * mask[..., None], x.grad * mask[..., None], grads


@pytest.mark.parametrize("head_dim", [1, 4, 16])
@pytest.mark.parametrize(
    "experts, combine, context",
    [(1, "mean", "full"), (4, "mean", "full"), (2, "sequential", "full"), (4, "mean", "self")],
)
def test_adapter_on_gpu_matches_cpu(head_dim, experts, combine, context):
    """Training mode (with recompute) and the no-grad inference path, values and gradients."""
    torch.manual_seed(0)
    cpu = FastTinyAttention(
        32, head_dim=head_dim, experts=experts, dropout=0.0, combine=combine, context=context
    )
    with torch.no_grad():
        for p in cpu.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    gpu = copy.deepcopy(cpu).to(CUDA)
    x, weights = torch.randn(3, 11, 32), torch.randn(3, 11, 32)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:], mask[2, 3:] = 0, 0
    cpu_out, cpu_dx, cpu_grads = forward_backward(cpu.train(), x, mask, weights)
    gpu_out, gpu_dx, gpu_grads = forward_backward(gpu.train(), x, mask, weights)
    close(gpu_out, cpu_out)
    close(gpu_dx, cpu_dx)
    for name, grad in cpu_grads.items():  # sums over every position: float32 order differs more
        close(gpu_grads[name], grad, atol=2e-4, rtol=1e-3)
    with torch.no_grad():  # inference: folded LayerNorm on the CPU, cached folded weights on both
        for _ in range(2):  # the second call reads the cache
            expected = cpu.eval()(x, mask) * mask[..., None]
            close(gpu.eval()(x.to(CUDA), mask.to(CUDA)) * mask.to(CUDA)[..., None], expected)


@pytest.mark.parametrize("head_dim", [1, 4, 16])
def test_gpu_fast_path_computes_the_plain_definition(head_dim):
    """On the GPU the fast path pads each head to a width of 8 for the fused attention kernels and
    caches its folded weights at inference: the same function as the plain definition."""
    torch.manual_seed(0)
    fast = FastTinyAttention(32, head_dim=head_dim, experts=4, dropout=0.0).to(CUDA)
    with torch.no_grad():
        for p in fast.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    plain = TinyAttention(32, head_dim=head_dim, experts=4, dropout=0.0).to(CUDA)
    plain.load_state_dict(fast.state_dict())
    x, weights = torch.randn(3, 11, 32), torch.randn(3, 11, 32)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:], mask[2, 3:] = 0, 0
    results = []
    for module in (fast, plain):
        out, dx, grads = forward_backward(module.train(), x, mask, weights)
        with torch.no_grad():
            inferred = module.eval()(x.to(CUDA), mask.to(CUDA)) * mask.to(CUDA)[..., None]
        results.append([out, dx, inferred, *grads.values()])
    for fast, plain in zip(*results):
        close(fast, plain, atol=1e-4, rtol=1e-3)


def test_recompute_replays_gpu_dropout():
    """Attention dropout on the GPU (inside the fused kernel): recompute replays the same masks."""
    torch.manual_seed(0)
    module = FastTinyAttention(32, experts=4, dropout=0.3).to(CUDA).train()
    with torch.no_grad():
        module.out_weight.normal_()
    x, mask = torch.randn(4, 16, 32, device=CUDA), torch.ones(4, 16, device=CUDA)
    results = []
    for recompute in (False, True):
        module.recompute = recompute
        module.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        out = module(x, mask)
        out.pow(2).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in module.parameters()]))
    (plain, plain_grads), (recomputed, recomputed_grads) = results
    torch.testing.assert_close(recomputed, plain)
    for a, b in zip(plain_grads, recomputed_grads):
        torch.testing.assert_close(b, a)
    with torch.no_grad():
        assert not torch.allclose(module.eval()(x, mask), plain, atol=1e-4)  # dropout was on


# ------------------------------------------------------------------ every method


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_on_gpu(method):
    """Eval logits equal the CPU's; one training step changes only the trainable parameters."""
    torch.manual_seed(0)
    model = build_model(method, tiny_encoder("bert"), 2)
    with torch.no_grad():  # adapters that start as the identity would hide a wrong GPU path
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    batch = tiny_batch()
    expected = model.eval()(**batch)
    gpu = copy.deepcopy(model).to(CUDA)
    batch = {k: v.to(CUDA) for k, v in batch.items()}
    close(gpu.eval()(**batch), expected, atol=1e-4)

    before = {n: p.detach().clone() for n, p in gpu.named_parameters()}
    trainable = [p for p in gpu.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=1e-2)
    gpu.train()
    loss = torch.nn.functional.cross_entropy(gpu(**batch), torch.tensor([0, 1, 1], device=CUDA))
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss)
    for name, param in gpu.named_parameters():
        assert torch.equal(param, before[name]) != param.requires_grad, name


# ------------------------------------------------------------------ whole runs

WORDS = [f"w{i}" for i in range(60)]


@pytest.fixture(scope="module")
def offline_setup(tmp_path_factory):
    """A saved random BERT with its tokenizer, and an SST-2 folder whose label is a cue word."""
    root = tmp_path_factory.mktemp("gpu")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", *WORDS]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    backbone = root / "backbone"
    tokenizer = BertTokenizerFast(vocab_file=str(root / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(backbone)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(backbone)
    rng = random.Random(0)
    folder = root / "data" / "glue" / "SST-2"
    folder.mkdir(parents=True)
    for split, n in (("train", 256), ("dev", 64)):
        rows = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.randint(0, 1)
            words = rng.choices(WORDS, k=rng.randint(3, 12))
            words.insert(rng.randint(0, len(words)), "good" if label else "bad")
            rows.append(f"{' '.join(words)}\t{label}")
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return backbone, root / "data"


def gpu_params(setup, out_dir, **overrides) -> RunParams:
    backbone, data = setup
    params = dict(
        task="sst2",
        method="tinyattn",
        backbone=str(backbone),
        seed=5,
        learning_rate=1e-2,
        epochs=2,
        batch_size=16,
        evals_per_epoch=2,
        data_dir=str(data),
        out_dir=str(out_dir),
        progress=False,
    )
    return RunParams(**(params | overrides))


def test_two_stage_run_on_gpu_equals_cpu_run(offline_setup, tmp_path, monkeypatch):
    """Without dropout a run is deterministic arithmetic: the GPU must train the CPU's model."""
    options = {"experts": 4, "dropout": 0.0}
    records, models = {}, {}
    for device in ("cpu", "cuda"):
        AcceleratorState._reset_state(reset_partial_state=True)
        if device == "cpu" or CUDA.type == "cpu":
            monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
        else:
            monkeypatch.delenv("ACCELERATE_USE_CPU")
        params = gpu_params(
            offline_setup,
            tmp_path / device,
            method_options=options,
            two_stage=True,
            head_dropout=0.0,
            save_adapter=True,
        )
        records[device], models[device] = run(params)
    AcceleratorState._reset_state(reset_partial_state=True)
    assert records["cpu"]["device"] == "cpu"
    assert records["cuda"]["device"].startswith(CUDA.type)
    assert records["cuda"]["stage_one"]["source"] == "trained within this run"
    for ours, theirs in zip(records["cuda"]["evaluations"], records["cpu"]["evaluations"]):
        assert ours["step"] == theirs["step"]
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-3)
        assert ours["metrics"]["accuracy"] == pytest.approx(theirs["metrics"]["accuracy"], abs=0.02)
    state = {n: p for n, p in models["cpu"].named_parameters() if p.requires_grad}
    for name, param in models["cuda"].named_parameters():
        if not param.requires_grad:
            continue
        expected = state[name]
        if name.endswith("qkv_bias"):
            # Not the key bias: softmax ignores a shift shared by all of a query's scores, so its
            # gradient is zero but for rounding, which Adam scales up to steps of about the learning
            # rate, differently on each device. The function does not depend on it (logits below).
            keep = torch.arange(param.shape[-1]) // (param.shape[-1] // 3) != 1
            param, expected = param[:, keep.to(param.device)], expected[:, keep]
        close(param, expected, atol=1e-3, rtol=1e-2)
    batch = tiny_batch(4, 10)
    batch["input_ids"] = batch["input_ids"] % models["cpu"].encoder.config.vocab_size
    with torch.no_grad():
        expected = models["cpu"].eval()(**batch)
        close(models["cuda"].eval()(**{k: v.to(CUDA) for k, v in batch.items()}), expected, 1e-3)

    # the adapter saved on the GPU, reloaded on the CPU, gives the GPU model's logits
    adapter_dir = tmp_path / "cuda" / "adapters" / records["cuda"]["run_id"]
    reloaded = load_adapter(adapter_dir, backbone=str(offline_setup[0])).eval()
    with torch.no_grad():
        expected = models["cuda"].eval()(**{k: v.to(CUDA) for k, v in batch.items()})
        close(reloaded(**batch), expected, atol=1e-4)


@pytest.mark.parametrize("method", ["tinyattn", "lora"])
def test_bf16_mixed_precision_run(
    offline_setup, tmp_path, monkeypatch, method, fresh_accelerate_state
):
    """``accelerate launch --mixed_precision bf16`` (the env variable it sets): the run trains."""
    if CUDA.type == "cuda" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    tinyattn = method == "tinyattn"  # the paper's model: four experts, two-stage, averaged
    options = {"experts": 4} if tinyattn else {}
    record, model = run(
        gpu_params(
            offline_setup,
            tmp_path,
            method=method,
            method_options=options,
            two_stage=tinyattn,
            epochs=3,
        )
    )
    assert AcceleratorState().mixed_precision == "bf16"
    losses = [e["train_loss"] for e in record["evaluations"]]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0]  # the cue word is learnable; a broken bf16 path does not learn it
    assert record["final"]["metrics"]["accuracy"] > 0.6
