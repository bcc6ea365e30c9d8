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
applies them). The update is added residually, by the caller or (``residual=``) by the module.

Why ``mean`` is the default: with identical experts it is *exactly* the single-expert model, so the
weight-averaged deployment starts from the training-time function and departs from it only as far as the
experts drift apart; the sequential form differs from its own average even for identical experts.

Parameters per expert: 2D (LayerNorm) + 3dD + 3d (q, k, v) + dD + D (output) = 7D + 3 for d = 1.
The authors' code also routes q, k, v through ``torch.nn.MultiheadAttention``, which adds redundant d x d
input and output projections (8 scalars per layer for d = 1, giving 7D + 11). They re-parametrise the same
function class, so they are left out here; ``paper_param_count`` reports the authors' count beside ours.

Every expert's weights are stored stacked on a leading expert axis. ``TinyAttention`` is the
definition above, written out, and nothing else: ``fastpath.FastTinyAttention`` builds on it and
computes the same function in fewer passes (folded weights, one GEMM for all experts, cheaper forms on
a CPU); it is what ``inject`` installs, and it is tested against this class.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

COMBINES = ("mean", "sequential")
CONTEXTS = ("full", "self")


class ExpertTools:
    """What a layer's experts offer besides ``forward``, mixed into ``TinyAttention``: their attention
    maps, their weight average (the deployed model) and one expert alone."""

    def attention_probs(self, hidden_states, padding_mask=None) -> torch.Tensor:
        """Every expert's attention probabilities (B, E, T, T) in eval mode: 0 on padding keys; the
        identity for ``context="self"``. Only for ``combine="mean"`` (else each expert's input depends
        on the others)."""
        if self.combine == "sequential" and self.experts > 1:
            raise NotImplementedError("attention_probs: only combine='mean' is supported")
        B, T, _ = hidden_states.shape
        if self.context == "self":
            eye = torch.eye(T, device=hidden_states.device, dtype=hidden_states.dtype)
            return eye.expand(B, self.experts, T, T).clone()
        q, k, _ = self._qkv(hidden_states)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, E, T, T)
        if padding_mask is not None:
            scores = scores.masked_fill(~padding_mask.bool()[:, None, None, :], float("-inf"))
        return scores.softmax(dim=-1)

    def average_experts(self) -> TinyAttention:
        """The deployed single-expert module whose weights are the element-wise mean of the experts'."""
        return self._single(lambda param: param.mean(dim=0, keepdim=True))

    def expert(self, index: int) -> TinyAttention:
        """Expert ``index`` alone, as a single-expert module (the single-expert deployment baselines)."""
        if not 0 <= index < self.experts:
            raise IndexError(f"expert index {index} out of range for {self.experts} experts")
        return self._single(lambda param: param[index : index + 1])

    def _single(self, pick) -> TinyAttention:
        # A new module: its (overwritten) initialisation draws from torch's global generator, as it
        # did when the study's runs were recorded, and their later dropout masks depend on the draws.
        options = dict(dropout=self.dropout, combine=self.combine, context=self.context)
        single = type(self)(self.hidden_size, head_dim=self.head_dim, **options)
        single.to(device=self.qkv_weight.device, dtype=self.qkv_weight.dtype)
        with torch.no_grad():
            for name, param in self.named_parameters():
                getattr(single, name).copy_(pick(param))
        return single.train(self.training)

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, head_dim={self.head_dim}, experts={self.experts}, "
            f"dropout={self.dropout}, combine={self.combine!r}, context={self.context!r}"
        )


class TinyAttention(ExpertTools, nn.Module):
    """E tiny-attention experts for one layer (see the module docstring); ``forward`` returns the update.

    hidden_size D; head_dim d (1 in every released configuration); experts E; dropout on the attention
    probabilities; combine ``"mean"`` | ``"sequential"``; context ``"full"`` (every non-padding token)
    | ``"self"`` (each token only itself: the title claim's ablation); out_scale: the output Linear's
    factor at construction (0.01: a near-identity start).
    """

    # Recompute in the backward pass instead of keeping the (B, E, T, T) attention probabilities: a
    # training step then needs less memory than LoRA's (Efficiency chapter); dropout masks are replayed.
    recompute: bool = True

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
        check_options(
            "TinyAttention",
            hidden_size=hidden_size,
            head_dim=head_dim,
            experts=experts,
            dropout=dropout,
            combine=combine,
            context=context,
        )
        self.hidden_size, self.head_dim, self.experts = hidden_size, head_dim, experts
        self.dropout, self.combine, self.context = dropout, combine, context
        E, D, d = experts, hidden_size, head_dim
        self.norm_weight = nn.Parameter(torch.ones(E, D))  # LayerNorm affine
        self.norm_bias = nn.Parameter(torch.zeros(E, D))
        self.qkv_weight = nn.Parameter(torch.empty(E, 3 * d, D))  # Linear D -> 3d: q, k, v rows
        self.qkv_bias = nn.Parameter(torch.empty(E, 3 * d))
        self.out_weight = nn.Parameter(torch.empty(E, D, d))  # Linear d -> D
        self.out_bias = nn.Parameter(torch.empty(E, D))
        self.reset_parameters(out_scale)

    def reset_parameters(self, out_scale: float = 0.01) -> None:
        """nn.Linear's default initialisation per expert, then the output Linear scaled by ``out_scale``."""
        with torch.no_grad():
            self.norm_weight.fill_(1.0)
            self.norm_bias.zero_()
            for weight, bias in (self.qkv_weight, self.qkv_bias), (self.out_weight, self.out_bias):
                bound = 1.0 / math.sqrt(weight.shape[-1])
                for e in range(self.experts):
                    nn.init.kaiming_uniform_(weight[e], a=math.sqrt(5))  # = nn.Linear's default
                    nn.init.uniform_(bias[e], -bound, bound)
            self.out_weight.mul_(out_scale)
            self.out_bias.mul_(out_scale)

    def forward(self, hidden_states, padding_mask=None, residual=None, *, reuse_residual=False):
        """hidden_states (B, T, D); padding_mask (B, T), nonzero at real tokens. Returns the update
        (B, T, D), or ``residual + update`` when ``residual`` (B, T, D) is given.

        ``reuse_residual``: the caller hands ``residual`` over and reads it no more (nor
        ``hidden_states``, when it is the same tensor), so a form that computes without gradients may
        write the result into it; the function is the same."""
        args = (hidden_states, padding_mask, residual)
        if self.recompute and self.training and torch.is_grad_enabled():
            return checkpoint(self.update, *args, use_reentrant=False)
        return self.update(*args, reuse_residual=reuse_residual)

    def update(self, x, padding_mask=None, residual=None, reuse_residual=False):
        """The combined update of x, plus ``residual`` when given (what ``forward`` computes); this
        definition always returns a new tensor."""
        out = self.plain_update(x, padding_mask)
        return out if residual is None else residual + out

    def plain_update(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None):
        """The method as defined: the experts' updates of x (B, T, D), combined: (B, T, D)."""
        if self.combine == "mean":
            return self.expert_updates(x, padding_mask).mean(1)
        h = x
        for e in range(self.experts):  # each expert sees the previous expert's output
            h = h + self.expert_updates(h, padding_mask, slice(e, e + 1))[:, 0] / self.experts
        return h - x

    def expert_updates(self, x, padding_mask=None, experts: slice = slice(None)):
        """Each expert's own update of x (B, T, D): (B, E, T, D)."""
        q, k, v = self._qkv(x, experts)  # each (B, E, T, d)
        if self.context == "self":
            o = v  # attending only to itself, a token gets its own value
        else:
            # (B, 1, 1, T): every query may attend to every real (non-padding) key
            mask = None if padding_mask is None else padding_mask.bool()[:, None, None, :]
            p = self.dropout if self.training else 0.0
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, E, T, d)
        return o @ self.out_weight[experts].transpose(1, 2) + self.out_bias[experts, None, :]

    def _qkv(self, x, experts: slice = slice(None)):
        """Each expert's own LayerNorm, then its Linear D -> 3d: q, k, v, each (B, E, T, d)."""
        h = F.layer_norm(x[:, None], x.shape[-1:])  # (B, 1, T, D)
        h = h * self.norm_weight[experts, None] + self.norm_bias[experts, None]  # (B, E, T, D)
        qkv = h @ self.qkv_weight[experts].transpose(1, 2) + self.qkv_bias[experts, None]
        return qkv.split(self.head_dim, dim=-1)  # (B, E, T, 3d) -> 3 x (B, E, T, d)


def check_options(
    owner: str, *, head_dim, experts, dropout, combine, context, hidden_size: int = 1
) -> None:
    """A ``ValueError`` naming ``owner`` and the first option out of range: the module's and both
    configurations' (``inject.TinyAttnConfig``, ``peft.TinyAttentionConfig``) one check."""
    for name, value in (("hidden_size", hidden_size), ("head_dim", head_dim), ("experts", experts)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"{owner}: dropout must be in [0, 1), got {dropout!r}")
    if combine not in COMBINES:
        raise ValueError(f"{owner}: unknown combine {combine!r}; choose one of {COMBINES}")
    if context not in CONTEXTS:
        raise ValueError(f"{owner}: unknown context {context!r}; choose one of {CONTEXTS}")


def param_count(hidden_size: int, head_dim: int = 1, experts: int = 1) -> int:
    """Parameters of one layer's adapter as implemented here: E (2D + 3dD + 3d + dD + D); 7D+3 for d=E=1."""
    D, d = hidden_size, head_dim
    return experts * (2 * D + 3 * d * D + 3 * d + d * D + D)


def paper_param_count(hidden_size: int, head_dim: int = 1, experts: int = 1) -> int:
    """The authors' count, with nn.MultiheadAttention's redundant d x d projections: 7D+11 for d=E=1."""
    d = head_dim
    return param_count(hidden_size, head_dim, experts) + experts * (3 * d * d + 3 * d + d * d + d)
