"""The tiny-attention module: its plain definition against a loop-over-positions reading of the method,
and every fast form (``tinyattn.fastpath``) against the plain definition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tinyattn import fastpath
from tinyattn.adapter import TinyAttention, paper_param_count, param_count
from tinyattn.fastpath import FastTinyAttention, dropout_keep_mask

#: The plain definition and the fast form that ``inject`` installs: every behaviour test runs on both.
FORMS = [TinyAttention, FastTinyAttention]


def reference_update(weights: dict, x: torch.Tensor, mask, *, combine="mean", context="full"):
    """The formula from explicit weights (name -> (E, ...) tensor), one expert, one sequence, one query
    position at a time (no fusion, no batching)."""
    B, T, D = x.shape
    E, three_d, _ = weights["qkv_weight"].shape
    d = three_d // 3
    mask = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.bool()

    def one_expert(e: int, h: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(h)
        for b in range(B):
            normed = [
                F.layer_norm(h[b, t], (D,), weights["norm_weight"][e], weights["norm_bias"][e])
                for t in range(T)
            ]
            qkv = [weights["qkv_weight"][e] @ n + weights["qkv_bias"][e] for n in normed]
            q = [v[:d] for v in qkv]
            k = [v[d : 2 * d] for v in qkv]
            v = [v[2 * d :] for v in qkv]
            for i in range(T):
                if context == "self":
                    attended = v[i]
                else:
                    keys = [j for j in range(T) if mask[b, j]]
                    scores = torch.stack([q[i] @ k[j] / math.sqrt(d) for j in keys])
                    probs = torch.softmax(scores, dim=0)
                    attended = sum(w * v[j] for w, j in zip(probs, keys))
                out[b, i] = weights["out_weight"][e] @ attended + weights["out_bias"][e]
        return out

    if combine == "mean":
        return sum(one_expert(e, x) for e in range(E)) / E
    h = x
    for e in range(E):
        h = h + one_expert(e, h) / E
    return h - x


def reference(module: TinyAttention, x, mask):
    weights = {n: p.detach() for n, p in module.named_parameters()}
    return reference_update(weights, x, mask, combine=module.combine, context=module.context)


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


CONFIGS = [
    (d, E, combine, context)
    for d in (1, 3)
    for E in (1, 4)
    for combine in ("mean", "sequential")
    for context in ("full", "self")
]


@pytest.mark.parametrize("head_dim, experts, combine, context", CONFIGS)
def test_plain_definition_matches_loop_reference(head_dim, experts, combine, context):
    module = randomised(
        TinyAttention(8, head_dim=head_dim, experts=experts, combine=combine, context=context)
    )
    x, mask = inputs()
    got = module(x, mask)
    assert got.shape == x.shape
    torch.testing.assert_close(got, reference(module, x, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head_dim, experts, combine, context", CONFIGS)
def test_fast_path_computes_the_plain_definition(head_dim, experts, combine, context):
    """Values and gradients in training (folded weights, fused residual) and inference (the CPU's
    folded LayerNorm and rank-one update, the fold cache), against the plain ``TinyAttention``."""
    options = dict(head_dim=head_dim, experts=experts, combine=combine, context=context)
    x, mask = inputs()
    x = 3 * x + 2  # an offset mean: the folded variance, E[x^2] - mean^2, must not lose it
    residual = torch.randn_like(x)
    weights = torch.linspace(-1, 1, x.numel()).view_as(x)
    results = []
    for form in (FastTinyAttention, TinyAttention):
        module = randomised(form(8, dropout=0.0, **options), seed=3).train()
        xg, rg = x.clone().requires_grad_(), residual.clone().requires_grad_()
        out = module(xg, mask, residual=rg)
        (out * weights).sum().backward()
        module.eval()
        with torch.inference_mode():
            inferred = [module(x, mask, residual=residual), module(x, mask), module(x, mask)]
        results.append([out.detach(), xg.grad, rg.grad, *inferred])
        results[-1] += [p.grad for p in module.parameters()]
    for got, want in zip(*results):
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
    full = TinyAttention(64, out_scale=1.0)
    torch.testing.assert_close(small.out_weight, full.out_weight * 0.01)
    torch.testing.assert_close(small.out_bias, full.out_bias * 0.01)
    bound = 1 / math.sqrt(1)  # nn.Linear(1, D) default init bound
    assert full.out_weight.abs().max() <= bound and full.out_weight.abs().max() > 0.5 * bound


def copies(single: TinyAttention, experts: int) -> TinyAttention:
    """``experts`` identical copies of a single expert, stacked by hand."""
    many = TinyAttention(single.hidden_size, head_dim=single.head_dim, experts=experts).eval()
    with torch.no_grad():
        for name, param in many.named_parameters():
            for e in range(experts):
                param[e] = getattr(single, name)[0]
    return many


def test_identical_experts_average_to_single_expert():
    single = randomised(TinyAttention(8, head_dim=2))
    many = copies(single, 4)
    x, mask = inputs()
    torch.testing.assert_close(many(x, mask), single(x, mask))
    torch.testing.assert_close(many.average_experts()(x, mask), single(x, mask))


def test_averaged_experts_compute_the_hand_averaged_expert():
    """The deployed module computes the formula with every weight averaged over the experts by hand."""
    E = 3
    many = randomised(TinyAttention(8, head_dim=2, experts=E), seed=3)
    hand = {}
    for name, param in many.named_parameters():
        total = torch.zeros_like(param[0])
        for e in range(E):
            total = total + param[e].detach()
        hand[name] = (total / E)[None]  # (1, ...): one expert
    avg = many.average_experts().eval()
    assert avg.experts == 1
    x, mask = inputs()
    want = reference_update(hand, x, mask)
    torch.testing.assert_close(avg(x, mask), want, rtol=1e-5, atol=1e-5)
    # and, for experts that really differ, averaging weights is not averaging outputs
    assert not torch.allclose(avg(x, mask), many(x, mask), atol=1e-4)


def test_expert_extracts_one_expert():
    many = randomised(TinyAttention(8, experts=3))
    x, mask = inputs()
    one = many.expert(2).eval()
    assert one.experts == 1
    weights = {n: p.detach()[2:3] for n, p in many.named_parameters()}
    torch.testing.assert_close(
        one(x, mask), reference_update(weights, x, mask), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(IndexError):
        many.expert(3)


@pytest.mark.parametrize("form", FORMS)
def test_attention_dropout_only_in_training(form):
    module = randomised(form(8, dropout=0.5))
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


def test_state_dict_layout_is_stable():
    """Saved adapters and the experts analysis read these names and shapes."""
    module = TinyAttention(16, head_dim=2, experts=3)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == {
        "norm_weight": (3, 16),
        "norm_bias": (3, 16),
        "qkv_weight": (3, 6, 16),
        "qkv_bias": (3, 6),
        "out_weight": (3, 16, 2),
        "out_bias": (3, 16),
    }


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


@pytest.mark.parametrize("form", FORMS)
def test_recompute_gives_the_same_gradients_with_dropout(form):
    x, mask = inputs()
    grads, saved = [], []
    for recompute in (False, True):
        module = randomised(form(8, experts=3, dropout=0.5)).train()
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
    for kept, recomputed in zip(*grads):
        torch.testing.assert_close(kept, recomputed)
    assert saved[1] < saved[0]  # the recomputed module really kept fewer tensors for backward


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("combine", ["mean", "sequential"])
@pytest.mark.parametrize("recompute", [False, True])
def test_fused_residual_equals_residual_plus_update(form, combine, recompute):
    x, mask = inputs()
    residual = torch.randn_like(x)
    results = []
    for fused in (False, True):
        module = randomised(form(8, experts=3, dropout=0.5, combine=combine)).train()
        module.recompute = recompute
        xg, rg = x.clone().requires_grad_(), residual.clone().requires_grad_()
        torch.manual_seed(0)  # the same dropout masks in both forms
        out = module(xg, mask, residual=rg) if fused else rg + module(xg, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach(), xg.grad, rg.grad, *(p.grad for p in module.parameters())])
    for unfused, fused in zip(*results):
        torch.testing.assert_close(fused, unfused)
    assert not torch.equal(results[0][0], residual)  # the update is really there


@pytest.mark.parametrize("experts,combine", [(1, "mean"), (3, "mean"), (3, "sequential")])
@pytest.mark.parametrize("same_tensor", [False, True])
def test_a_handed_over_residual_holds_the_same_result(experts, combine, same_tensor):
    """``reuse_residual``: without gradients the fast form writes ``residual + update`` into the
    residual it was handed (one pass and no new (B, T, D) tensor), also when the residual is the input
    itself (the after-attention placement); the value is the plain definition's. With gradients, and
    in the plain definition, nothing is written into it."""
    x, mask = inputs(D=8)
    fast = randomised(FastTinyAttention(8, experts=experts, combine=combine))
    plain = randomised(TinyAttention(8, experts=experts, combine=combine))
    residual = x if same_tensor else torch.randn_like(x)
    want = plain(x, mask, residual=residual)
    for module in plain, fast:
        given = residual.clone()
        source = given if same_tensor else x
        with torch.no_grad():
            out = module(source, mask, residual=given, reuse_residual=True)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        written = out.data_ptr() == given.data_ptr()
        in_place = module is fast and combine == "mean" or module is fast and experts == 1
        assert written == in_place, (type(module).__name__, written)
        if not written:
            assert torch.equal(given, residual)  # left as it was
    given = residual.clone()
    out = fast.train()(x, mask, residual=given, reuse_residual=True)  # gradients: a new tensor
    assert out.data_ptr() != given.data_ptr() and torch.equal(given, residual)


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
    """Padding q, k and v to a width of 8 (what a GPU gets) gives the same attention and gradients."""
    x, mask = inputs()
    module = randomised(TinyAttention(8, head_dim=head_dim, experts=3))
    q, k, v = (t.detach() for t in module._qkv(x))  # each (B, E, T, d)
    keep = mask.bool()[:, None, None, :]
    results = []
    for pad in (False, True):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fastpath.attend(*leaves, keep, 0.0, pad=pad)
        assert out.shape == q.shape
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach(), *(t.grad for t in leaves)])
    for unpadded, padded in zip(*results):
        torch.testing.assert_close(padded, unpadded)
    want = torch.softmax(
        (q @ k.transpose(-1, -2)).masked_fill(~keep, -math.inf) / head_dim**0.5, -1
    )
    torch.testing.assert_close(results[1][0], want @ v)


def test_inference_reuses_folded_weights_until_a_parameter_changes():
    module = randomised(FastTinyAttention(8, experts=3))
    x, mask = inputs()
    with torch.no_grad():
        first = module(x, mask)
        folded = module.folds[(None, None)][1]
        module(x, mask)
        assert module.folds[(None, None)][1] is folded  # reused, not recomputed
    torch.testing.assert_close(first, module(x, mask))  # equal to the pass that folds afresh

    # an optimiser step changes the weights in place: the next inference pass must use the new ones
    module(x, mask).pow(2).sum().backward()
    torch.optim.SGD(module.parameters(), lr=0.5).step()
    with torch.inference_mode():
        stepped = module(x, mask)
    assert not torch.allclose(stepped, first)
    torch.testing.assert_close(stepped, reference(module, x, mask))

    # so does loading another module's weights
    other = randomised(FastTinyAttention(8, experts=3), seed=5)
    module.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(module(x, mask), other(x, mask))


def test_cpu_inference_path_survives_tokens_without_variance():
    # E[x^2] - mean^2 of a constant token is 0 up to rounding, which can come out negative: no NaN
    module = FastTinyAttention(384).eval()
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


@pytest.mark.parametrize("head_dim", [1, 2])
def test_cpu_training_attention_applies_the_mask_it_draws(monkeypatch, head_dim):
    """A CPU training step draws its dropout mask cheaply; with that mask, it computes the plain
    definition: probabilities of the non-padding keys, dropped and rescaled by 1 / (1 - p)."""
    module = randomised(FastTinyAttention(8, head_dim=head_dim, experts=2, dropout=0.25)).train()
    x, mask = inputs()
    drawn = []
    draw = fastpath.dropout_keep_mask
    monkeypatch.setattr(
        fastpath, "dropout_keep_mask", lambda *a, **k: drawn.append(draw(*a, **k)) or drawn[-1]
    )
    update = module(x, mask)
    (keep,) = drawn
    assert 0 < keep.float().mean() < 1
    # the same update from the plain definition's q, k, v, with that mask
    q, k, v = module._qkv(x)
    scores = (q @ k.transpose(-1, -2) / head_dim**0.5).masked_fill(
        ~mask.bool()[:, None, None, :], float("-inf")
    )
    o = (scores.softmax(-1) * keep) @ v / 0.75  # (B, E, T, d)
    want = torch.einsum("betd,eDd->btD", o, module.out_weight) / 2 + module.out_bias.mean(0)
    torch.testing.assert_close(update, want)


def test_the_definition_stands_alone_and_the_fast_form_is_installed():
    """``adapter.py`` imports nothing of the fast path; ``inject`` installs the fast form, whose
    deployed (averaged) and single-expert modules stay fast, with the plain state-dict layout."""
    import ast
    import inspect

    from tinyattn import adapter
    from tinyattn.inject import TinyAttnConfig, new_adapter

    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(inspect.getsource(adapter)))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert not any("fastpath" in (name or "") for name in imported)
    assert not any("fast" in name for name in vars(TinyAttention))  # no class flag
    installed = new_adapter(8, TinyAttnConfig(experts=3))
    assert type(installed) is FastTinyAttention
    assert type(installed.average_experts()) is type(installed.expert(0)) is FastTinyAttention
    assert type(TinyAttention(8, experts=2).average_experts()) is TinyAttention
    assert installed.state_dict().keys() == TinyAttention(8, experts=3).state_dict().keys()
