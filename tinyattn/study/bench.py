"""Training and inference cost of the methods, side by side, in one process.

Every method is built once on the same backbone; timings interleave the methods (A, B, C, then B, C, A,
...: the order rotates every repetition) after warm-up, so that drift in the machine's speed falls on
all of them alike; medians and inter-quartile ranges are reported. Training memory is counted tensor
by tensor (saved activations, gradients, optimiser state), which is exact on any device (the
measurements are ``tinyattn.measure``'s). Analytic FLOPs per token complete it; ``cost_tables`` and
``runs_table`` read the benchmark's JSON back for the book.
"""

from __future__ import annotations

import copy
import json
import statistics
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from tinyattn.adapter import TinyAttention
from tinyattn.inject import PREFIX, average_experts
from tinyattn.measure import (
    ModuleClock,
    dispatch_profile,
    paired_ratio,
    quartiles,
    rotated,
    summary,
    synchronizer,
    timed,
    training_memory_mb,
)
from tinyattn.methods import build_model, get_method, method_options
from tinyattn.model import DEFAULT_BACKBONE, load_encoder
from tinyattn.records import machine, versions


@dataclass(frozen=True)
class Setup:
    """One configuration the benchmark measures: a registered method (``tinyattn.methods``), its
    options (the registry's defaults fill in the rest), and the form it runs in:

    ``trained`` (as built), ``stored`` (tiny attention keeping its activations for the backward pass
    instead of recomputing them), ``averaged`` (experts weight-averaged, as deployed), ``unmerged`` /
    ``merged`` (LoRA with non-zero updates, beside or folded into the backbone's weights)."""

    method: str
    options: dict = field(default_factory=dict)
    form: str = "trained"

    def __post_init__(self) -> None:
        method_options(self.method, self.options)  # an unknown method or option fails at import


# The benchmark measures configurations of the registered methods rather than the registry itself:
# the study's main comparisons (not every registered method), some in several forms (E = 1 and E = 4,
# activations recomputed or stored, trained or deployed), under the names that results/bench/*.json
# and the efficiency chapter key on. Each names its registered method and options, checked against the
# registry; the FLOPs formula reads the options (LoRA's rank, the bottleneck width, ...) from there too.
TRAIN_METHODS = {
    "full_ft": Setup("full_ft"),
    "lora": Setup("lora"),
    "houlsby": Setup("houlsby"),
    "pfeiffer": Setup("pfeiffer"),
    "prefix": Setup("prefix"),
    "tinyattn_e1": Setup("tinyattn"),
    "tinyattn_e4": Setup("tinyattn", {"experts": 4}),
    "tinyattn_e4_stored": Setup("tinyattn", {"experts": 4}, "stored"),
}
INFER_METHODS = {  # deployed forms: merged / averaged where the method allows it
    "backbone": Setup("head_only"),
    "tinyattn_e4": Setup("tinyattn", {"experts": 4}),
    "tinyattn_averaged": Setup("tinyattn", {"experts": 4}, "averaged"),
    "lora_unmerged": Setup("lora", form="unmerged"),
    "lora_merged": Setup("lora", form="merged"),
    "houlsby": Setup("houlsby"),
    "pfeiffer": Setup("pfeiffer"),
}
SETUPS = {**TRAIN_METHODS, **INFER_METHODS}
# inference forms whose adapters' share of a pass is timed too, and those whose dispatch is profiled
TINY_INFER = tuple(name for name, s in INFER_METHODS.items() if s.method == "tinyattn")
DISPATCHED = ("backbone", "tinyattn_averaged", "tinyattn_e4", "lora_merged")


def random_batch(batch_size: int, length: int, vocab: int, seed: int = 0) -> dict:
    """Random token ids (no padding) and their attention mask: the benchmark's input."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, min(vocab, 20000), (batch_size, length), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def build(setup: Setup, encoder):
    """The model of ``setup`` on ``encoder`` (modified in place: pass a copy), in its form."""
    model = build_model(setup.method, encoder, 2, setup.options)
    if setup.form == "stored":
        for layer in getattr(model, PREFIX).layers:
            layer.recompute = False
    elif setup.form == "averaged":
        average_experts(model)
    elif setup.form in ("unmerged", "merged"):
        with torch.no_grad():  # LoRA's B starts at zero; give it weights so merging is real work
            for pname, param in model.named_parameters():
                if "lora_B" in pname:
                    param.normal_(0, 0.01)
        if setup.form == "merged":
            model.encoder = model.encoder.merge_and_unload()
    return model


def _train_step(model, optim, batch: dict, labels: torch.Tensor) -> None:
    torch.nn.functional.cross_entropy(model(**batch), labels).backward()
    optim.step()
    optim.zero_grad(set_to_none=True)


def flops_per_token(
    method: str,
    hidden: int,
    layers: int,
    intermediate: int,
    length: int,
    options: dict | None = None,
) -> float:
    """Analytic forward FLOPs per token (multiply-add = 2 FLOPs) of the backbone plus the method.

    ``method``: a name of ``SETUPS``; ``options`` override its options. Per layer, the backbone's
    matrix products (q, k, v, output: 4 D²; FFN: 2 D·I) and its attention over ``length`` tokens
    (scores and mixing: 2 n·D); biases, LayerNorms, softmax and the head are not counted.
    """
    setup = SETUPS[method]
    opts = method_options(setup.method, {**setup.options, **(options or {})})
    D, n = hidden, length
    backbone = layers * (2 * (4 * D * D + 2 * D * intermediate) + 4 * n * D)
    return float(backbone + layers * _adapter_flops(setup, opts, D, n))


def _adapter_flops(setup: Setup, opts: dict, D: int, n: int) -> int:
    """One layer's FLOPs per token added by the method, in its form (the registry's formula)."""
    formula = get_method(setup.method).flops
    if formula is None:
        raise ValueError(f"no FLOPs formula for method {setup.method!r}")
    return formula(opts, D, n, setup.form)


def _time_training(base, device: str, batch: dict, labels, warmup: int, repeats: int) -> dict:
    """Every ``TRAIN_METHODS`` model's training step (forward, backward, AdamW), and its memory."""
    sync = synchronizer(device)
    models, optims = {}, {}
    for name, setup in TRAIN_METHODS.items():
        models[name] = build(setup, copy.deepcopy(base)).to(device).train()
        optims[name] = torch.optim.AdamW(
            [p for p in models[name].parameters() if p.requires_grad], lr=1e-5
        )
    times = {name: [] for name in models}
    for rep in range(warmup + repeats):
        for name, model in rotated(models, rep):
            elapsed = timed(partial(_train_step, model, optims[name], batch, labels), sync)
            if rep >= warmup:
                times[name].append(elapsed)
    tokens = batch["input_ids"].numel()
    return {
        name: {
            **summary(t),
            "tokens_per_s": tokens / statistics.median(t),
            "memory": training_memory_mb(models[name], batch, labels),
        }
        for name, t in times.items()
    }


def _time_inference(base, device: str, batch: dict, warmup: int, repeats: int) -> tuple[dict, dict]:
    """Every ``INFER_METHODS`` model's forward pass in eval mode without gradients, the adapters'
    in-pass share for ``TINY_INFER``; and what a pass dispatches for ``DISPATCHED``."""
    sync = synchronizer(device)
    infer = {
        name: build(setup, copy.deepcopy(base)).to(device).eval()
        for name, setup in INFER_METHODS.items()
    }
    times = {name: [] for name in infer}
    clocks = {
        name: ModuleClock(
            [m for m in infer[name].modules() if isinstance(m, TinyAttention)], device
        )
        for name in TINY_INFER
    }
    shares = {name: [] for name in clocks}
    with torch.inference_mode():
        for rep in range(warmup + repeats):
            for name, model in rotated(infer, rep):
                if name in clocks:
                    clocks[name].reset()
                elapsed = timed(partial(model, **batch), sync)
                if rep >= warmup:
                    times[name].append(elapsed)
                    if name in clocks:
                        shares[name].append(clocks[name].seconds / elapsed)
    rows = {name: summary(t) for name, t in times.items()}
    for clock in clocks.values():
        clock.remove()
    dispatch = {name: dispatch_profile(infer[name], batch) for name in DISPATCHED}
    for name, share in shares.items():
        q1, median, q3 = quartiles(share)
        rows[name]["adapter_share"] = {"median": median, "q1": q1, "q3": q3}
    return rows, dispatch


def run_benchmark(
    *,
    backbone: str = DEFAULT_BACKBONE,
    batch_size: int = 32,
    lengths=(128,),
    warmup: int = 2,
    repeats: int = 7,
    device: str | None = None,
    threads: int | None = None,
    weights: bool = True,
) -> dict:
    """Time and memory of every method on one backbone. ``weights=False`` builds the backbone from
    its config with random weights (for machines that have the config but not the checkpoint): the
    computation, hence every timing and memory figure, does not depend on the weights' values."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if threads:
        torch.set_num_threads(threads)
    base = load_encoder(backbone, weights=weights)
    cfg = base.config
    results: dict = {
        "backbone": backbone,
        "weights": "pretrained" if weights else "random (architecture from the backbone's config)",
        "batch_size": batch_size,
        "lengths": list(lengths),
        "warmup": warmup,
        "repeats": repeats,
        "device": device,
        "machine": machine(),
        "versions": versions(),
        "train": {},
        "inference": {},
        "flops_per_token": {},
    }
    for length in lengths:
        key = str(length)
        batch = {
            k: v.to(device) for k, v in random_batch(batch_size, length, cfg.vocab_size).items()
        }
        labels = torch.zeros(batch_size, dtype=torch.long, device=device)
        results["train"][key] = _time_training(base, device, batch, labels, warmup, repeats)
        infer, dispatch = _time_inference(base, device, batch, warmup, repeats)
        results["inference"][key] = infer
        results.setdefault("inference_dispatch", {})[key] = dispatch
        results["flops_per_token"][key] = {
            name: flops_per_token(
                name, cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, length
            )
            for name in SETUPS
        }
    main = str(lengths[-1])
    train, infer = results["train"][main], results["inference"][main]
    results["train_step_ratio"] = {
        name: train[name]["median_s"] / train["lora"]["median_s"] for name in train
    }
    results["inference_ratio"] = {
        name: infer[name]["median_s"] / infer["backbone"]["median_s"] for name in infer
    }
    results["peak_memory_mb"] = {name: train[name]["memory"]["total_mb"] for name in train}
    results["paired_train_step_ratio"] = {name: paired_ratio(train, name, "lora") for name in train}
    results["paired_inference_ratio"] = {
        name: paired_ratio(infer, name, "backbone") for name in infer
    }
    # the latency ratio implied by the adapters' share s of their own pass: 1 / (1 - s)
    results["share_inference_ratio"] = {
        name: {k: 1 / (1 - v) for k, v in infer[name]["adapter_share"].items()}
        for name in TINY_INFER
    }
    return results


#: Where the committed benchmark files live (``cpu.json``; ``gpu/``: one file per GPU run).
BENCH_DIR = "results/bench"
#: What every benchmark file holds, whatever its code or device.
BENCH_KEYS = ("machine", "versions", "train_step_ratio", "inference_ratio", "peak_memory_mb")


def read_bench(path: str | Path) -> dict:
    """One benchmark file (``tinyattn bench --out``), checked: the one reader of the benchmark files.
    A missing file, a file that is not JSON or one without a benchmark's keys is a ``ValueError``
    naming it."""
    path = Path(path)
    try:
        bench = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"benchmark file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"benchmark file {path}: not valid JSON ({err.msg})") from None
    missing = [key for key in BENCH_KEYS if not isinstance(bench, dict) or key not in bench]
    if missing:
        raise ValueError(f"benchmark file {path}: not a benchmark (no {', '.join(missing)})")
    return bench


def read_benches(folder: str | Path) -> dict[str, dict]:
    """Every benchmark file in ``folder`` by file stem, in name order (``read_bench``)."""
    return {path.stem: read_bench(path) for path in sorted(Path(folder).glob("*.json"))}


def cost_tables(bench: dict):
    """The benchmark JSON as two tables (training, inference) at its longest sequence length."""
    import pandas as pd

    length = str(bench["lengths"][-1])
    flops = bench["flops_per_token"][length]
    train = pd.DataFrame(
        {
            name: {
                "step ms (median)": 1000 * row["median_s"],
                "IQR ms": 1000 * (row["q3_s"] - row["q1_s"]),
                "tokens/s": row["tokens_per_s"],
                "× LoRA": bench["train_step_ratio"][name],
                "memory MB": row["memory"]["total_mb"],
                "GFLOPs/token": flops[name] / 1e9,
            }
            for name, row in bench["train"][length].items()
        }
    ).T.round(3)
    infer = pd.DataFrame(
        {
            name: {
                "batch ms (median)": 1000 * row["median_s"],
                "IQR ms": 1000 * (row["q3_s"] - row["q1_s"]),
                "× backbone": bench["inference_ratio"][name],
                "GFLOPs/token": flops[name] / 1e9,
            }
            for name, row in bench["inference"][length].items()
        }
    ).T.round(3)
    return train, infer


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")  # no kernels counted (a CPU run) or none recorded


def runs_table(benches: dict):
    """One row per benchmark run (name -> its JSON), for comparing runs of one configuration across
    processes and code versions: inference ratios end to end (per-round, median) and from the in-pass
    share, the null control, what a pass dispatches, and the E = 4 training step against LoRA's."""
    import pandas as pd

    rows = {}
    for name, bench in benches.items():
        length = str(bench["lengths"][-1])
        paired, share = bench["paired_inference_ratio"], bench["share_inference_ratio"]
        calls = bench.get("inference_dispatch", {}).get(length, {})
        nan = float("nan")

        def dispatched(method: str, key: str, calls=calls, nan=nan) -> float:
            return calls.get(method, {}).get(key, nan)

        rows[name] = {
            "batch × tokens": f"{bench['batch_size']} × {length}",
            "averaged / backbone": paired["tinyattn_averaged"]["median"],
            "averaged, in-pass share": share["tinyattn_averaged"]["median"],
            "E = 4 / backbone": paired["tinyattn_e4"]["median"],
            "merged LoRA / backbone (null control)": paired["lora_merged"]["median"],
            "backbone ms": 1000 * bench["inference"][length]["backbone"]["median_s"],
            "backbone kernel ms": dispatched("backbone", "kernel_ms_per_pass"),
            "kernels per pass, backbone": dispatched("backbone", "kernels_per_pass"),
            "kernels per pass, averaged": dispatched("tinyattn_averaged", "kernels_per_pass"),
            "kernel time, averaged / backbone": _ratio(
                dispatched("tinyattn_averaged", "kernel_ms_per_pass"),
                dispatched("backbone", "kernel_ms_per_pass"),
            ),
            "E = 4 / LoRA (training step)": bench["paired_train_step_ratio"]["tinyattn_e4"][
                "median"
            ],
        }
    return pd.DataFrame(rows).T
