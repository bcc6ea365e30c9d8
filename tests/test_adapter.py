"""The tiny-attention module against a direct, loop-over-positions reading of the method."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tinyattn.adapter import TinyAttention, dropout_keep_mask, paper_param_count, param_count


def reference_update(module: TinyAttention, x: torch.Tensor, mask: torch.Tensor | None):
    """The formula, one expert, one sequence, one query position at a time (no fusion, no batching)."""
    B, T, D = x.shape
    d, E = module.head_dim, module.experts
    mask = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.bool()

    def one_expert(e: int, h: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(h)
        for b in range(B):
            normed = [
                F.layer_norm(h[b, t], (D,), module.norm_weight[e], module.norm_bias[e])
                for t in range(T)
            ]
            qkv = [module.qkv_weight[e] @ n + module.qkv_bias[e] for n in normed]
            q = [v[:d] for v in qkv]
            k = [v[d : 2 * d] for v in qkv]
            v = [v[2 * d :] for v in qkv]
            for i in range(T):
                if module.context == "self":
                    attended = v[i]
                else:
                    keys = [j for j in range(T) if mask[b, j]]
                    scores = torch.stack([q[i] @ k[j] / math.sqrt(d) for j in keys])
                    weights = torch.softmax(scores, dim=0)
                    attended = sum(w * v[j] for w, j in zip(weights, keys))
                out[b, i] = module.out_weight[e] @ attended + module.out_bias[e]
        return out

    if module.combine == "mean":
        return sum(one_expert(e, x) for e in range(E)) / E
    h = x
    for e in range(E):
        h = h + one_expert(e, h) / E
    return h - x


def randomised(module: TinyAttention, seed: int = 0) -> TinyAttention:
    """Give every parameter (LayerNorm affine included) a non-trivial random value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return module.eval()


def inputs(B=2, T=6, D=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=gen)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 4:] = 0
    return x, mask


@pytest.mark.parametrize("head_dim", [1, 3])
@pytest.mark.parametrize("experts", [1, 4])
@pytest.mark.parametrize("combine", ["mean", "sequential"])
@pytest.mark.parametrize("context", ["full", "self"])
def test_module_matches_loop_reference(head_dim, experts, combine, context):
    module = randomised(
        TinyAttention(8, head_dim=head_dim, experts=experts, combine=combine, context=context)
    )
    x, mask = inputs()
    got = module(x, mask)
    want = reference_update(module, x, mask)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_padding_is_masked():
    """Changing a padded position's hidden state changes no real token's update."""
    module = randomised(TinyAttention(8, experts=2))
    x, mask = inputs()
    y = x.clone()
    y[1, 5] = torch.randn(8) * 3  # row 1 is padded from position 4
    torch.testing.assert_close(module(x, mask)[1, :4], module(y, mask)[1, :4])
    assert not torch.allclose(module(x, None)[1, :4], module(y, None)[1, :4])


def test_self_context_removes_cross_token_interaction():
    module = randomised(TinyAttention(8, context="self"))
    x, mask = inputs()
    y = x.clone()
    y[0, 3] = torch.randn(8) * 3
    diff = (module(x, mask) - module(y, mask)).abs().sum(-1)[0]
    assert diff[3] > 0
    assert torch.all(diff[[0, 1, 2, 4, 5]] == 0)


def test_output_starts_near_identity():
    """The output Linear is scaled x0.01 at construction, so the first update is tiny."""
    torch.manual_seed(0)
    small = TinyAttention(64, out_scale=0.01)
    torch.manual_seed(0)
    plain = TinyAttention(64, out_scale=1.0)
    torch.testing.assert_close(small.out_weight, plain.out_weight * 0.01)
    torch.testing.assert_close(small.out_bias, plain.out_bias * 0.01)
    bound = 1 / math.sqrt(1)  # nn.Linear(1, D) default init bound
    assert plain.out_weight.abs().max() <= bound and plain.out_weight.abs().max() > 0.5 * bound


def test_identical_experts_average_to_single_expert():
    single = randomised(TinyAttention(8, head_dim=2))
    many = TinyAttention.init_experts_from(single, 4, noise_std=0.0).eval()
    x, mask = inputs()
    torch.testing.assert_close(many(x, mask), single(x, mask))
    torch.testing.assert_close(many.average_experts()(x, mask), single(x, mask))


def test_average_equals_module_with_mean_weights():
    many = randomised(TinyAttention(8, head_dim=2, experts=3), seed=3)
    avg = many.average_experts()
    assert avg.experts == 1
    manual = TinyAttention(8, head_dim=2).eval()
    with torch.no_grad():
        for name, p in many.named_parameters():
            getattr(manual, name).copy_(p.mean(0, keepdim=True))
            torch.testing.assert_close(getattr(avg, name)[0], p.mean(0))
    x, mask = inputs()
    torch.testing.assert_close(avg.eval()(x, mask), manual(x, mask))
    # and, for experts that really differ, averaging weights is not averaging outputs
    assert not torch.allclose(avg(x, mask), many(x, mask), atol=1e-4)


def test_init_experts_from_adds_small_noise_on_qkv_only():
    single = randomised(TinyAttention(8))
    gen = torch.Generator().manual_seed(0)
    many = TinyAttention.init_experts_from(single, 4, noise_std=1e-3, generator=gen)
    assert many.experts == 4
    for name in ("norm_weight", "norm_bias", "out_weight", "out_bias"):
        assert torch.equal(
            getattr(many, name), getattr(single, name).expand(4, *getattr(single, name).shape[1:])
        )
    delta = many.qkv_weight - single.qkv_weight
    assert 0 < delta.std() < 3e-3
    assert not torch.equal(many.qkv_weight[0], many.qkv_weight[1])  # experts are not clones


def test_expert_extracts_one_expert():
    many = randomised(TinyAttention(8, experts=3))
    x, mask = inputs()
    one = many.expert(2).eval()
    want = reference_update(TinyAttention.init_experts_from(one, 1, noise_std=0).eval(), x, mask)
    torch.testing.assert_close(one(x, mask), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(IndexError):
        many.expert(3)


def test_attention_dropout_only_in_training():
    module = randomised(TinyAttention(8, dropout=0.5))
    x, mask = inputs()
    torch.testing.assert_close(module(x, mask), module(x, mask))
    module.train()
    torch.manual_seed(0)
    a = module(x, mask)
    torch.manual_seed(1)
    assert not torch.allclose(a, module(x, mask))


@pytest.mark.parametrize("D,d,E", [(384, 1, 1), (384, 1, 4), (1024, 1, 1), (768, 4, 2)])
def test_parameter_count_matches_formula(D, d, E):
    module = TinyAttention(D, head_dim=d, experts=E)
    assert sum(p.numel() for p in module.parameters()) == param_count(D, d, E)
    if d == 1:
        assert param_count(D, 1, E) == E * (7 * D + 3)
        assert paper_param_count(D, 1, E) == E * (7 * D + 11)
    # the paper's headline count: RoBERTa-large, 24 layers, one expert
    assert 24 * paper_param_count(1024) == 172_296


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"head_dim": 0}, "head_dim"),
        ({"head_dim": -1}, "head_dim"),
        ({"experts": 0}, "experts"),
        ({"combine": "max"}, "combine"),
        ({"context": "left"}, "context"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TinyAttention(8, **kwargs)


def test_recompute_gives_the_same_gradients_with_dropout():
    x, mask = inputs()
    grads, saved = [], []
    for recompute in (False, True):
        module = randomised(TinyAttention(8, experts=3, dropout=0.5)).train()
        module.recompute = recompute
        torch.manual_seed(0)
        count = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t, c=count: c.append(1) or t, lambda t: t
        ):
            out = module(x.clone().requires_grad_(), mask)
        saved.append(len(count))
        out.pow(2).sum().backward()
        grads.append([p.grad.clone() for p in module.parameters()])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(plain, recomputed)
    assert saved[1] < saved[0]  # the recomputed module really kept fewer tensors for backward


@pytest.mark.parametrize("combine", ["mean", "sequential"])
@pytest.mark.parametrize("recompute", [False, True])
def test_fused_residual_equals_residual_plus_update(combine, recompute):
    x, mask = inputs()
    residual = torch.randn_like(x)
    results = []
    for fused in (False, True):
        module = randomised(TinyAttention(8, experts=3, dropout=0.5, combine=combine)).train()
        module.recompute = recompute
        xg, rg = x.clone().requires_grad_(), residual.clone().requires_grad_()
        torch.manual_seed(0)  # the same dropout masks in both forms
        out = module(xg, mask, residual=rg) if fused else rg + module(xg, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach(), xg.grad, rg.grad, *(p.grad for p in module.parameters())])
    for plain, fused in zip(*results):
        torch.testing.assert_close(fused, plain)
    assert not torch.equal(results[0][0], residual)  # the update is really there


@pytest.mark.parametrize("head_dim", [1, 4])
def test_key_bias_gets_no_gradient(head_dim):
    """The key bias shifts all of a query's scores alike, which the softmax ignores (Method chapter)."""
    x, mask = inputs(D=16)
    module = randomised(TinyAttention(16, head_dim=head_dim, experts=3, dropout=0.0)).train()
    (
        module(x, mask) * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    ).sum().backward()
    grad = module.qkv_bias.grad  # (E, 3d): query, key, value biases
    d = head_dim
    assert grad[:, d : 2 * d].abs().max() < 1e-6 * grad.abs().max()
    assert (grad[:, :d].abs().amax(-1) > 1e-4).all() and (
        grad[:, 2 * d :].abs().amax(-1) > 1e-4
    ).all()


@pytest.mark.parametrize("experts", [1, 4])
def test_mixed_precision_keeps_the_residual_in_float32(experts):
    """Under bf16 autocast the fused residual add must not round the hidden states to bf16: an update
    far below their rounding step (about 1/256 of their size) still arrives."""
    x, mask = inputs(D=64)
    residual = torch.randn_like(x) * 10
    module = randomised(TinyAttention(64, experts=experts, dropout=0.0)).train()
    with torch.no_grad():
        module.out_weight.mul_(1e-4)
        module.out_bias.mul_(1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        update = module(x, mask)
        out = module(x, mask, residual=residual)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out - residual, update.float(), rtol=0.02, atol=5e-6)


@pytest.mark.parametrize("head_dim", [1, 3])
def test_zero_padded_heads_change_nothing(head_dim):
    """Padding q, k and v to a width of 8 (what a GPU gets) gives the same update and gradients."""
    x, mask = inputs()
    results = []
    for pad_heads in ("never", "always"):
        module = randomised(TinyAttention(8, head_dim=head_dim, experts=3))
        module.pad_heads = pad_heads
        xg = x.clone().requires_grad_()
        out = module(xg, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach(), xg.grad, *(p.grad for p in module.parameters())])
    for plain, padded in zip(*results):
        torch.testing.assert_close(padded, plain)
    torch.testing.assert_close(results[1][0], reference_update(module, x, mask).detach())


def test_inference_reuses_folded_weights_until_a_parameter_changes():
    module = randomised(TinyAttention(8, experts=3))
    x, mask = inputs()
    with torch.no_grad():
        first = module(x, mask)
        folded = module._fold_cache[(None, None)][1]
        module(x, mask)
        assert module._fold_cache[(None, None)][1] is folded  # reused, not recomputed
    torch.testing.assert_close(first, module(x, mask))  # equal to the pass that folds afresh

    # an optimiser step changes the weights in place: the next inference pass must use the new ones
    module(x, mask).pow(2).sum().backward()
    torch.optim.SGD(module.parameters(), lr=0.5).step()
    with torch.inference_mode():
        stepped = module(x, mask)
    assert not torch.allclose(stepped, first)
    torch.testing.assert_close(stepped, reference_update(module, x, mask).detach())

    # so does loading another module's weights
    other = randomised(TinyAttention(8, experts=3), seed=5)
    module.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(module(x, mask), other(x, mask))


@pytest.mark.parametrize("head_dim, experts", [(1, 1), (1, 4), (3, 2)])
@pytest.mark.parametrize("combine", ["mean", "sequential"])
def test_cpu_inference_path_computes_the_training_function(head_dim, experts, combine):
    """Without gradients a CPU folds the LayerNorm into the projection and, for a rank-one update,
    adds it elementwise; the result must be the function that training computes."""
    module = randomised(
        TinyAttention(8, head_dim=head_dim, experts=experts, combine=combine), seed=3
    )
    x, mask = inputs()
    x = 3 * x + 2  # an offset mean: the folded variance, E[x^2] - mean^2, must not lose it
    residual = torch.randn_like(x)
    plain = module(x, mask, residual=residual)  # gradients on: LayerNorm, then the projection
    assert plain.requires_grad
    with torch.inference_mode():
        fast = module(x, mask, residual=residual)
        update = module(x, mask)
    torch.testing.assert_close(fast, plain.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(update, (plain - residual).detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(update, reference_update(module, x, mask).detach())


def test_cpu_inference_path_survives_tokens_without_variance():
    # E[x^2] - mean^2 of a constant token is 0 up to rounding, which can come out negative: no NaN
    module = TinyAttention(384).eval()
    x = torch.linspace(1, 2000, 64)[:, None, None].expand(64, 1, 384).contiguous()
    with torch.no_grad():
        assert torch.isfinite(module(x, None, residual=x)).all()


def test_dropout_keep_mask_has_its_rate_and_follows_the_seed():
    torch.manual_seed(0)
    keep = dropout_keep_mask((1000, 1000), 0.1)
    assert keep.dtype == torch.bool and keep.shape == (1000, 1000)
    assert abs(keep.float().mean().item() - 0.9) < 0.002  # 1e6 draws: sd 3e-4
    assert abs(keep[:, :500].float().mean() - keep[:, 500:].float().mean()) < 0.003  # no pattern
    torch.manual_seed(0)
    assert torch.equal(keep, dropout_keep_mask((1000, 1000), 0.1))
    assert dropout_keep_mask((7, 3), 0.0).all()


def test_cpu_training_attention_applies_the_mask_it_draws(monkeypatch):
    import tinyattn.adapter as adapter_module

    module = randomised(TinyAttention(8, experts=2, dropout=0.25)).train()
    x, mask = inputs()
    drawn = []
    draw = adapter_module.dropout_keep_mask
    monkeypatch.setattr(
        adapter_module,
        "dropout_keep_mask",
        lambda *a, **k: drawn.append(draw(*a, **k)) or drawn[-1],
    )
    update = module(x, mask)
    (keep,) = drawn
    assert 0 < keep.float().mean() < 1
    # the same update by hand, with that mask
    q, k, v = module._qkv(x, module._fold(slice(None)))
    scores = (q @ k.transpose(-1, -2)).masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    o = (scores.softmax(-1) * keep) @ v / 0.75  # (B, E, T, d)
    want = torch.einsum("betd,eDd->btD", o, module.out_weight) / 2 + module.out_bias.mean(0)
    torch.testing.assert_close(update, want)
