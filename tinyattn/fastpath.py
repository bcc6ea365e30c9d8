"""The tiny-attention adapter's fast forms: the function ``TinyAttention`` defines, in fewer passes.

``TinyAttention`` (in ``adapter.py``) states the method plainly. ``FastTinyAttention`` is that class
with its ``update`` computed by this module: the same parameters, state dict and random draws, the same
function more cheaply; ``inject`` installs it. Each form below is tested against the plain definition
(``tests/test_adapter.py``), and each is used where it pays:

- **Folded weights** (``fold``, everywhere): each expert's LayerNorm affine is folded into its q/k/v
  projection, so all experts share one normalisation of x and one GEMM; the experts' output Linears and
  biases, averaged, become one ``(E*d + 1, D)`` matrix that also adds the residual (``addmm``).
- **Fold cache** (``FastTinyAttention.folds``, at inference): the folding depends on the weights alone,
  so it is computed once and reused until a parameter changes (keyed on every parameter's storage and
  version counter).
- **LayerNorm inside the GEMM** (``qkv(fold_norm=True)``, CPU inference): no normalised copy of x is
  written and read back; the weights are centred once, and the token's mean is one more output of the
  same GEMM.
- **Into the residual** (without gradients, when the caller hands its residual over, as ``inject``'s
  hooks do): ``residual += [o, 1] [U^T / E; c]`` in place, one pass and no new (B, T, D) tensor, whose
  first touch of fresh memory costs a CPU as much as the arithmetic.
- **Rank-one output** (CPU inference, E*d = 1, residual not handed over): ``residual + o u + c`` in two
  elementwise passes.
- **Cheap dropout mask** (``attend_with_dropout``, a CPU training step): 16 random bits per decision.
- **Padded heads** (``attend``, a GPU): each head zero-padded to a width of 8, which the fused attention
  kernels need; the padding adds 0 to every score and its outputs are dropped.

The random draws of the CPU training step (``dropout_keep_mask``) are part of what every recorded CPU run
computed: change them and the study's runs no longer reproduce.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from tinyattn.adapter import TinyAttention

LN_EPS = 1e-5  # nn.LayerNorm's default


class Folded(NamedTuple):
    """One layer's experts as matrices ready for one GEMM each."""

    w: torch.Tensor  # (E*3d, D): q/k/v projections, each expert's LayerNorm scale folded in
    b: torch.Tensor  # (E*3d,): their biases, each expert's LayerNorm shift folded in
    w_out: torch.Tensor  # (E*d + 1, D): [U^T / E; mean_e c_e], the averaged output Linear and bias
    w_mean: torch.Tensor  # (D, E*3d + 1): w with each row's mean taken out, then a row of 1/D, as
    # the right-hand factor of one matrix product (transposed once here, not at every pass)


class FastTinyAttention(TinyAttention):
    """``TinyAttention`` computed through the fast forms of this module (the same function)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.folds: dict = {}  # the fold cache: (slice start, stop) -> (parameter versions, Folded)

    def update(self, x, padding_mask=None, residual=None, reuse_residual=False):
        return update(self, x, padding_mask, residual, reuse_residual)


def update(module, x, padding_mask, residual=None, reuse_residual=False):
    """``module``'s update of x (B, T, D), plus ``residual`` when given: the fast form of
    ``TinyAttention.plain_update``. ``reuse_residual``: the result may be written into ``residual``
    (done without gradients only)."""
    if module.combine == "mean" or module.experts == 1:
        inplace = reuse_residual and residual is not None and not torch.is_grad_enabled()
        return mean_update(module, x, padding_mask, residual=residual, inplace=inplace)
    h = x
    for e in range(module.experts):  # each expert sees the previous expert's output
        h = h + mean_update(module, h, padding_mask, expert=e) / module.experts
    out = h - x
    return out if residual is None else residual + out


def fold(module, sl: slice) -> Folded:
    """The experts in ``sl`` as matrices for one GEMM each (see ``Folded``)."""
    w_all = module.qkv_weight[sl]
    E, D = w_all.shape[0], module.hidden_size
    w = w_all * module.norm_weight[sl, None, :]  # (E, 3d, D)
    b = module.qkv_bias[sl] + torch.einsum("eod,ed->eo", w_all, module.norm_bias[sl])  # (E, 3d)
    u = module.out_weight[sl].permute(1, 0, 2).reshape(D, -1) / E  # (D, E*d)
    w_out = torch.cat([u.t(), module.out_bias[sl].mean(0, keepdim=True)])  # (E*d + 1, D)
    w = w.reshape(-1, D)
    w_mean = torch.cat([w - w.mean(-1, keepdim=True), w.new_full((1, D), 1.0 / D)])
    return Folded(w, b.reshape(-1), w_out, w_mean.t().contiguous())


def folded(module, sl: slice) -> Folded:
    """``fold``, computed once and reused while no gradient is recorded and no parameter changed.

    At inference the folding is a dozen small operations per pass that depend on the weights alone;
    on a GPU each is a kernel launch. The cache is keyed on every parameter's storage and version
    counter, which any in-place update (an optimiser step, ``load_state_dict``) advances."""
    params = list(module.parameters())
    if torch.is_grad_enabled() or any(p.is_inference() for p in params):
        return fold(module, sl)
    key = tuple((p.data_ptr(), p._version) for p in params)
    cache = module.folds
    hit = cache.get((sl.start, sl.stop))
    if hit is None or hit[0] != key:
        hit = cache[(sl.start, sl.stop)] = (key, fold(module, sl))
    return hit[1]


def qkv(x, weights: Folded, head_dim: int, fold_norm: bool = False):
    """Queries, keys and values of the folded experts, each (B, E, T, d).

    ``fold_norm``: apply the LayerNorm inside the projection, LN(x) w^T = rstd (x - mean) w^T =
    rstd x (w - mean(w))^T, with each row's mean taken out of w once (``fold``), the token's mean as
    one more output of the same GEMM and its second moment from one norm over D, so that no
    normalised copy of x is written and read back. On a CPU that copy, not the
    arithmetic, is the largest cost of the adapter (see Efficiency); on a GPU the extra small
    operations would each be a kernel launch, so there it stays a LayerNorm.
    """
    B, T, D = x.shape
    if fold_norm:
        y = torch.mm(x.reshape(B * T, D), weights.w_mean).view(B, T, -1)  # (x - mean) w^T; mean
        mean = y[..., -1:]
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        # the variance, E[x^2] - mean^2, in place (float scalars, mul_ not square_: no casts)
        var = norm.mul_(norm).mul_(1.0 / D).addcmul_(mean, mean, value=-1.0).clamp_(min=0.0)
        out = torch.addcmul(weights.b, y[..., :-1], var.add_(LN_EPS).rsqrt_())
    else:
        x_hat = F.layer_norm(x, (D,), eps=LN_EPS)  # (B, T, D); the affine is in w and b
        out = F.linear(x_hat, weights.w, weights.b)  # (B, T, E*3d): one matmul for all experts
    return out.view(B, T, -1, 3, head_dim).permute(3, 0, 2, 1, 4)


def mean_update(module, x, padding_mask, expert: int | None = None, residual=None, inplace=False):
    """Mean over experts of their updates (or one expert's update when ``expert`` is given), plus
    ``residual`` when given; ``inplace``: written into ``residual``, whose (B, T, D) result a fresh
    tensor would cost a pass of page faults on a CPU (it is read only after x has been)."""
    sl = slice(None) if expert is None else slice(expert, expert + 1)
    E = module.experts if expert is None else 1
    B, T, D = x.shape
    d = module.head_dim
    weights = folded(module, sl)
    # Inference on a CPU (no gradient recorded) takes the passes that cost least there; training and
    # GPUs keep the LayerNorm and the output GEMM. Both compute the same function (tested).
    cpu_inference = not torch.is_grad_enabled() and not x.is_cuda
    q, k, v = qkv(x, weights, d, fold_norm=cpu_inference)  # each (B, E, T, d)
    if module.context == "self":
        o = v  # softmax over the token itself is 1: the value passes through
    else:
        mask = None
        if padding_mask is not None:
            mask = padding_mask.bool()[:, None, None, :]  # (B, 1, 1, T): True = may attend
        p = module.dropout if module.training else 0.0
        if p > 0 and not q.is_cuda:  # a CPU training step: see attend_with_dropout
            o = attend_with_dropout(q, k, v, mask, p, scale=1 / math.sqrt(d))
        else:
            o = attend(q, k, v, mask, p, pad=q.is_cuda)
    # Output Linear of every expert, averaged: sum_e o_e U_e^T / E + mean_e c_e, as one GEMM with
    # the bias folded in, [o, 1] [U^T / E; c], that also adds the residual. With E*d = 1 the product
    # is cheap and the pass over (B, T, D) is the cost, so each pass saved counts (see Efficiency).
    o = o.transpose(1, 2).reshape(B * T, E * d)
    if cpu_inference and E * d == 1 and residual is not None and not inplace:
        # A rank-one update into a new tensor, residual + o u + c, in two elementwise passes: a
        # GEMM whose inner dimension is 2, writing a new tensor, runs slower than that on a CPU.
        out = torch.addcmul(residual.reshape(B * T, D), o, weights.w_out[:1])
        return out.add_(weights.w_out[1]).view(B, T, D)
    o1 = torch.cat([o, o.new_ones(B * T, 1)], dim=1)  # (B*T, E*d + 1)
    w1 = weights.w_out  # (E*d + 1, D)
    if residual is None:
        return (o1 @ w1).view(B, T, D)
    if torch.is_autocast_enabled(o1.device.type):
        # Under mixed precision autocast would run addmm, the residual included, in bf16/fp16: the
        # hidden states would be rounded at every layer and an update smaller than their rounding
        # step lost. Add the half-precision update to the residual in the residual's precision.
        return residual + (o1 @ w1).view(B, T, D)
    if inplace:  # into the residual handed over: one pass over it, no new (B, T, D) tensor
        return residual.reshape(B * T, D).addmm_(o1, w1).view(B, T, D)
    return torch.addmm(residual.reshape(B * T, D), o1, w1).view(B, T, D)


def attend(q, k, v, mask, p: float, pad: bool = False):
    """``scaled_dot_product_attention`` of each expert's head; ``pad``: zero-pad heads to a width of 8.

    A GPU's fused attention kernels need a head width that is a multiple of 8; with d = 1
    ``scaled_dot_product_attention`` falls back to its unfused path, which writes the (B, E, T, T) scores
    to memory in several kernels. The padded entries add 0 to every score and their outputs are
    dropped, so the result is unchanged. On a CPU the unfused path is the faster one.
    """
    d = q.shape[-1]
    width = (-d) % 8 if pad else 0
    if width:
        q, k, v = (F.pad(t, (0, width)) for t in (q, k, v))
    o = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=p, scale=1 / math.sqrt(d)
    )  # (B, E, T, d + width)
    return o[..., :d] if width else o


def dropout_keep_mask(shape, p: float, device=None) -> torch.Tensor:
    """Keep (True) with probability 1 - p, independently per element: dropout's mask.

    Each decision is made from 16 random bits, cut from 64-bit integers, so a mask takes a quarter as many
    draws from the generator as elements; ``torch.bernoulli_`` draws a double per element, which on a CPU
    made the mask the largest cost of the adapter's training step. ``p`` is rounded to a multiple of 1/65536
    (0.1 becomes 0.100006). Draws come from torch's default generator, so seeding and the recomputation's
    replay of the generator state work as for any other dropout.
    """
    n = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    bits = words.view(torch.int16)[:n].view(shape)  # uniform on [-32768, 32767]
    return bits >= -32768 + round(p * 65536)


def attend_with_dropout(q, k, v, mask, p: float, scale: float) -> torch.Tensor:
    """Attention with dropout p on its probabilities, for a CPU training step.

    The same function as ``scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
    scale=scale)``, which on a CPU computes dropout through its unfused path anyway. Here the mask is drawn
    more cheaply (``dropout_keep_mask``), the d = 1 scores are an outer product, and padding is an additive
    bias. q, k, v (B, E, T, d); mask (B, 1, 1, T), True = may attend.
    """
    if q.shape[-1] == 1:
        scores = q * k.transpose(-1, -2)  # (B, E, T, T): with d = 1, an outer product, one pass
    else:
        scores = torch.matmul(q, k.transpose(-1, -2))
    if scale != 1.0:
        scores = scores * scale
    if mask is not None:
        # padding as an additive (B, 1, 1, T) bias: cheaper than filling the (B, E, T, T) scores
        bias = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
        scores = scores + bias.masked_fill_(~mask, float("-inf"))
    keep = dropout_keep_mask(scores.shape, p, scores.device)
    scaled_keep = torch.where(keep, 1 / (1 - p), 0.0).to(scores.dtype)  # 0, or 1 / (1 - p) if kept
    probs = scores.softmax(dim=-1) * scaled_keep
    return torch.matmul(probs, v)
