"""The tiny-attention adapter: attention with a tiny per-head dimension, its experts, and their averaging.

Reference: Zhao, Tan & Mei, "Tiny-Attention Adapter: Contexts Are More Important Than the Number of
Parameters", EMNLP 2022 (arXiv 2211.01979), and the authors' released code (``cindermond/tiny-attn``).

One expert e maps hidden states x (B, T, D) to an update

    h_e      = LayerNorm_e(x)                           own affine LayerNorm over D
    q, k, v  = h_e W_e + b_e                            one Linear D -> 3d
    a        = softmax(q k^T / sqrt(d) + padding mask)  dropout on the probabilities
    delta_e  = (a v) U_e + c_e                          Linear d -> D, scaled x0.01 at construction

and E experts are combined either as the mean of their updates (``combine="mean"``, the default) or one
after another, each seeing the previous one's output (``combine="sequential"``, as the authors' code
applies them). The update is added residually, by the caller or (``residual=``) inside the output GEMM.

Why ``mean`` is the default: with identical experts it is *exactly* the single-expert model, so the
weight-averaged deployment starts from the training-time function and departs from it only as far as the
experts drift apart; the sequential form differs from its own average even for identical experts.

Parameters per expert: 2D (LayerNorm) + 3dD + 3d (q, k, v) + dD + D (output) = 7D + 3 for d = 1.
The authors' code also routes q, k, v through ``torch.nn.MultiheadAttention``, which adds redundant d x d
input and output projections (8 scalars per layer for d = 1, giving 7D + 11). They re-parametrise the same
function class, so they are left out here; ``paper_param_count`` reports the authors' count beside ours.

Implementation: every expert's weights are stored stacked on a leading expert axis, so the mean
combination is one fused projection for all experts, one ``scaled_dot_product_attention`` call with E
heads, and one output matmul that also adds the output bias and the residual, with no Python loop
over experts. A CPU takes cheaper forms of the same function where they pay: at inference the LayerNorm
inside the projection and an elementwise rank-one update (``_qkv``, ``_mean_update``), in training a cheaper
attention-dropout mask (``attend_with_dropout``). Each is tested against the plain form.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

COMBINES = ("mean", "sequential")
CONTEXTS = ("full", "self")
LN_EPS = 1e-5  # nn.LayerNorm's default


class Folded(NamedTuple):
    """One layer's experts as matrices ready for one GEMM each."""

    w: torch.Tensor  # (E*3d, D): q/k/v projections, each expert's LayerNorm scale folded in
    b: torch.Tensor  # (E*3d,): their biases, each expert's LayerNorm shift folded in
    w_out: torch.Tensor  # (E*d + 1, D): [U^T / E; mean_e c_e], the averaged output Linear and bias
    w_mean: torch.Tensor  # (E*3d + 1, D): w with a last row of 1/D, so x w_mean^T ends in x's mean
    w_sum: torch.Tensor  # (E*3d,): the row sums of w


class TinyAttention(nn.Module):
    """E tiny-attention experts for one layer; ``forward`` returns the update, not the new hidden states.

    Args:
        hidden_size: D, the width of the hidden states it reads and updates.
        head_dim: d, the attention width of one expert (1 in every released configuration).
        experts: E, the number of experts ("heads" in the paper).
        dropout: dropout on the attention probabilities while training.
        combine: ``"mean"`` (parallel mean of the experts' updates) or ``"sequential"``.
        context: ``"full"`` (attend to every non-padding token) or ``"self"`` (each token attends only
            to itself: the same parameters with no context, for the ablation of the paper's title claim).
        out_scale: factor applied to the output Linear at construction (0.01: a near-identity start).
    """

    def __init__(
        self,
        hidden_size: int,
        *,
        head_dim: int = 1,
        experts: int = 1,
        dropout: float = 0.1,
        combine: str = "mean",
        context: str = "full",
        out_scale: float = 0.01,
    ) -> None:
        super().__init__()
        for name, value in (
            ("hidden_size", hidden_size),
            ("head_dim", head_dim),
            ("experts", experts),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"TinyAttention: {name} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"TinyAttention: dropout must be in [0, 1), got {dropout!r}")
        if combine not in COMBINES:
            raise ValueError(
                f"TinyAttention: unknown combine {combine!r}; choose one of {COMBINES}"
            )
        if context not in CONTEXTS:
            raise ValueError(
                f"TinyAttention: unknown context {context!r}; choose one of {CONTEXTS}"
            )
        self.hidden_size, self.head_dim, self.experts = hidden_size, head_dim, experts
        self.dropout, self.combine, self.context = dropout, combine, context
        E, D, d = experts, hidden_size, head_dim

        self.norm_weight = nn.Parameter(torch.ones(E, D))
        self.norm_bias = nn.Parameter(torch.zeros(E, D))
        self.qkv_weight = nn.Parameter(torch.empty(E, 3 * d, D))  # rows: q (d), k (d), v (d)
        self.qkv_bias = nn.Parameter(torch.empty(E, 3 * d))
        self.out_weight = nn.Parameter(torch.empty(E, D, d))
        self.out_bias = nn.Parameter(torch.empty(E, D))
        self.reset_parameters(out_scale)

    def reset_parameters(self, out_scale: float = 0.01) -> None:
        """nn.Linear's default initialisation per expert, then the output Linear scaled by ``out_scale``."""
        with torch.no_grad():
            self.norm_weight.fill_(1.0)
            self.norm_bias.zero_()
            for weight, bias in (
                (self.qkv_weight, self.qkv_bias),
                (self.out_weight, self.out_bias),
            ):
                fan_in = weight.shape[-1]
                bound = 1.0 / math.sqrt(fan_in)
                for e in range(self.experts):
                    nn.init.kaiming_uniform_(weight[e], a=math.sqrt(5))  # = nn.Linear's default
                    nn.init.uniform_(bias[e], -bound, bound)
            self.out_weight.mul_(out_scale)
            self.out_bias.mul_(out_scale)

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, head_dim={self.head_dim}, experts={self.experts}, "
            f"dropout={self.dropout}, combine={self.combine!r}, context={self.context!r}"
        )

    # ------------------------------------------------------------------ forward
    #: Recompute the module in the backward pass instead of keeping its activations (its attention
    #: probabilities, B x E x T x T, and LayerNorm output): the module's forward runs twice, which is
    #: cheap next to the backbone's, and a training step then needs less memory than LoRA's (see the
    #: Efficiency chapter). Dropout masks are replayed, so gradients are unchanged. Set it to False on
    #: an instance to keep the activations instead.
    recompute: bool = True

    #: Zero-pad each head to a width of 8 before attention: ``"cuda"`` (default) on a GPU only, or
    #: ``"always"`` / ``"never"``. A GPU's fused attention kernels need a head width that is a multiple
    #: of 8; with d = 1 ``scaled_dot_product_attention`` falls back to its unfused path, which writes the
    #: (B, E, T, T) scores to memory in several kernels. The padded entries add 0 to every score and their
    #: outputs are dropped, so the result is unchanged. On a CPU the unfused path is the faster one.
    pad_heads: str = "cuda"

    def forward(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
    ):
        """hidden_states (B, T, D); padding_mask (B, T), nonzero/True at real tokens. Returns the update
        (B, T, D), or ``residual + update`` when ``residual`` (B, T, D) is given: the residual add is then
        fused into the output projection, one pass over the hidden states instead of two."""
        if self.recompute and self.training and torch.is_grad_enabled():
            return checkpoint(
                self._update, hidden_states, padding_mask, residual, use_reentrant=False
            )
        return self._update(hidden_states, padding_mask, residual)

    def _update(self, hidden_states, padding_mask, residual=None):
        if self.combine == "mean" or self.experts == 1:
            return self._mean_update(hidden_states, padding_mask, residual=residual)
        h = hidden_states
        for e in range(self.experts):  # each expert sees the previous expert's output
            h = h + self._mean_update(h, padding_mask, expert=e) / self.experts
        update = h - hidden_states
        return update if residual is None else residual + update

    def _fold(self, sl: slice) -> Folded:
        """The experts in ``sl`` as matrices for one GEMM each (see ``Folded``)."""
        w_all = self.qkv_weight[sl]
        E, D = w_all.shape[0], self.hidden_size
        w = w_all * self.norm_weight[sl, None, :]  # (E, 3d, D)
        b = self.qkv_bias[sl] + torch.einsum("eod,ed->eo", w_all, self.norm_bias[sl])  # (E, 3d)
        u = self.out_weight[sl].permute(1, 0, 2).reshape(D, -1) / E  # (D, E*d)
        w_out = torch.cat([u.t(), self.out_bias[sl].mean(0, keepdim=True)])  # (E*d + 1, D)
        w = w.reshape(-1, D)
        w_mean = torch.cat([w, w.new_full((1, D), 1.0 / D)])
        return Folded(w, b.reshape(-1), w_out, w_mean, w.sum(-1))

    def _folded(self, sl: slice) -> Folded:
        """``_fold``, computed once and reused while no gradient is recorded and no parameter changed.

        At inference the folding is a dozen small operations per pass that depend on the weights alone;
        on a GPU each is a kernel launch. The cache is keyed on every parameter's storage and version
        counter, which any in-place update (an optimiser step, ``load_state_dict``) advances."""
        params = list(self.parameters())
        if torch.is_grad_enabled() or any(p.is_inference() for p in params):
            return self._fold(sl)
        key = tuple((p.data_ptr(), p._version) for p in params)
        cache = self.__dict__.setdefault("_fold_cache", {})
        hit = cache.get((sl.start, sl.stop))
        if hit is None or hit[0] != key:
            hit = cache[(sl.start, sl.stop)] = (key, self._fold(sl))
        return hit[1]

    def _qkv(self, x, folded: Folded, fold_norm: bool = False):
        """Queries, keys and values of the folded experts, each (B, E, T, d).

        ``fold_norm``: apply the LayerNorm inside the projection, LN(x) w^T = rstd (x w^T - mean w 1),
        with the token's mean as one more output of the same GEMM and its second moment from one norm
        over D, so that no normalised copy of x is written and read back. On a CPU that copy, not the
        arithmetic, is the largest cost of the adapter (see Efficiency); on a GPU the extra small
        operations would each be a kernel launch, so there it stays a LayerNorm.
        """
        B, T, D = x.shape
        if fold_norm:
            y = F.linear(x, folded.w_mean)  # (B, T, E*3d + 1): x w^T, then the mean
            mean = y[..., -1:]
            second = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(D)
            var = second.sub_(mean * mean).clamp_(min=0)
            qkv = torch.addcmul(
                folded.b, y[..., :-1] - mean * folded.w_sum, var.add_(LN_EPS).rsqrt_()
            )
        else:
            x_hat = F.layer_norm(x, (D,), eps=LN_EPS)  # (B, T, D); the affine is in w and b
            qkv = F.linear(x_hat, folded.w, folded.b)  # (B, T, E*3d): one matmul for all experts
        return qkv.view(B, T, -1, 3, self.head_dim).permute(3, 0, 2, 1, 4)

    def _mean_update(self, x, padding_mask, expert: int | None = None, residual=None):
        """Mean over experts of their updates (or one expert's update when ``expert`` is given), plus
        ``residual`` when given."""
        sl = slice(None) if expert is None else slice(expert, expert + 1)
        E = self.experts if expert is None else 1
        B, T, D = x.shape
        d = self.head_dim
        folded = self._folded(sl)
        # Inference on a CPU (no gradient recorded) takes the passes that cost least there; training and
        # GPUs keep the plain form. Both compute the same function (tested against each other).
        cpu_inference = not torch.is_grad_enabled() and not x.is_cuda
        q, k, v = self._qkv(x, folded, fold_norm=cpu_inference)  # each (B, E, T, d)
        if self.context == "self":
            o = v  # softmax over the token itself is 1: the value passes through
        else:
            mask = None
            if padding_mask is not None:
                mask = padding_mask.bool()[:, None, None, :]  # (B, 1, 1, T): True = may attend
            p = self.dropout if self.training else 0.0
            if p > 0 and not q.is_cuda:  # a CPU training step: see attend_with_dropout
                o = attend_with_dropout(q, k, v, mask, p, scale=1 / math.sqrt(d))
            else:
                o = self._attend(q, k, v, mask, p)
        # Output Linear of every expert, averaged: sum_e o_e U_e^T / E + mean_e c_e, as one GEMM with
        # the bias folded in, [o, 1] [U^T / E; c], that also adds the residual. With E*d = 1 the product
        # is cheap and the pass over (B, T, D) is the cost, so each pass saved counts (see Efficiency).
        o = o.transpose(1, 2).reshape(B * T, E * d)
        if cpu_inference and E * d == 1 and residual is not None:
            # A rank-one update, residual + o u + c, in two elementwise passes: a GEMM whose inner
            # dimension is 2 runs several times slower than that on a CPU.
            out = torch.addcmul(residual.reshape(B * T, D), o, folded.w_out[:1])
            return out.add_(folded.w_out[1]).view(B, T, D)
        o1 = torch.cat([o, o.new_ones(B * T, 1)], dim=1)  # (B*T, E*d + 1)
        w1 = folded.w_out  # (E*d + 1, D)
        if residual is None:
            return (o1 @ w1).view(B, T, D)
        if torch.is_autocast_enabled(o1.device.type):
            # Under mixed precision autocast would run addmm, the residual included, in bf16/fp16: the
            # hidden states would be rounded at every layer and an update smaller than their rounding
            # step lost. Add the half-precision update to the residual in the residual's precision.
            return residual + (o1 @ w1).view(B, T, D)
        return torch.addmm(residual.reshape(B * T, D), o1, w1).view(B, T, D)

    def _attend(self, q, k, v, mask, p: float):
        """``scaled_dot_product_attention`` of each expert's head, padded to a width of 8 on a GPU."""
        d = q.shape[-1]
        pad = (
            (-d) % 8
            if self.pad_heads == "always" or (self.pad_heads == "cuda" and q.is_cuda)
            else 0
        )
        if pad:
            q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=p, scale=1 / math.sqrt(d)
        )  # (B, E, T, d + pad)
        return o[..., :d] if pad else o

    def attention_probs(
        self, hidden_states: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Every expert's attention probabilities (B, E, T, T) as ``forward`` uses them in eval mode.

        Padding keys get probability 0; with ``context="self"`` it is the identity (every token,
        padding included, attends only to itself).
        """
        if self.combine == "sequential" and self.experts > 1:
            raise NotImplementedError(
                "attention_probs: with combine='sequential' each expert reads the previous one's "
                "output, so its attention depends on the others; only combine='mean' is supported"
            )
        B, T, _ = hidden_states.shape
        if self.context == "self":
            eye = torch.eye(T, device=hidden_states.device, dtype=hidden_states.dtype)
            return eye.expand(B, self.experts, T, T).clone()
        q, k, _ = self._qkv(hidden_states, self._folded(slice(None)))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, E, T, T)
        if padding_mask is not None:
            keep = padding_mask.bool()[:, None, None, :]
            scores = scores.masked_fill(~keep, float("-inf"))
        return scores.softmax(dim=-1)

    # ------------------------------------------------------------------ experts
    def average_experts(self) -> TinyAttention:
        """The deployed single-expert module whose weights are the element-wise mean of the experts'."""
        avg = TinyAttention(
            self.hidden_size,
            head_dim=self.head_dim,
            experts=1,
            dropout=self.dropout,
            combine=self.combine,
            context=self.context,
        ).to(device=self.qkv_weight.device, dtype=self.qkv_weight.dtype)
        with torch.no_grad():
            for name, param in self.named_parameters():
                getattr(avg, name).copy_(param.mean(dim=0, keepdim=True))
        avg.train(self.training)
        return avg

    def expert(self, index: int) -> TinyAttention:
        """Expert ``index`` alone, as a single-expert module (for the single-expert deployment baselines)."""
        if not 0 <= index < self.experts:
            raise IndexError(f"expert index {index} out of range for {self.experts} experts")
        single = copy.deepcopy(self)
        single.experts = 1
        for name, param in self.named_parameters():
            setattr(single, name, nn.Parameter(param.detach()[index : index + 1].clone()))
        return single

    @classmethod
    def init_experts_from(
        cls,
        trained: TinyAttention,
        experts: int,
        *,
        noise_std: float = 1e-6,
        combine: str | None = None,
        generator: torch.Generator | None = None,
    ) -> TinyAttention:
        """The authors' two-stage start: E copies of a trained single expert, plus N(0, noise_std^2) on q/k/v.

        Starting every expert from one trained solution keeps them in one basin, which is what makes the
        element-wise average of their weights a good deployed model.
        """
        if trained.experts != 1:
            raise ValueError(
                f"init_experts_from needs a single-expert module, got {trained.experts} experts"
            )
        new = cls(
            trained.hidden_size,
            head_dim=trained.head_dim,
            experts=experts,
            dropout=trained.dropout,
            combine=combine or trained.combine,
            context=trained.context,
        ).to(device=trained.qkv_weight.device, dtype=trained.qkv_weight.dtype)
        with torch.no_grad():
            for name, param in trained.named_parameters():
                getattr(new, name).copy_(param.expand_as(getattr(new, name)))
            for param in (new.qkv_weight, new.qkv_bias):
                noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
                param.add_(noise.to(param.device) * noise_std)
        return new


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


def param_count(hidden_size: int, head_dim: int = 1, experts: int = 1) -> int:
    """Parameters of one layer's adapter as implemented here: E (2D + 3dD + 3d + dD + D); 7D+3 for d=E=1."""
    D, d = hidden_size, head_dim
    return experts * (2 * D + 3 * d * D + 3 * d + d * D + D)


def paper_param_count(hidden_size: int, head_dim: int = 1, experts: int = 1) -> int:
    """The authors' count, with nn.MultiheadAttention's redundant d x d projections: 7D+11 for d=E=1."""
    d = head_dim
    return param_count(hidden_size, head_dim, experts) + experts * (3 * d * d + 3 * d + d * d + d)
