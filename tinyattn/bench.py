"""Training and inference cost of the methods, side by side, in one process.

Every method is built once on the same backbone; timings interleave the methods (A, B, C, then B, C, A,
...: the order rotates every repetition) after warm-up, so that drift in the machine's speed falls on all of them alike; medians and
inter-quartile ranges are reported. Training memory is counted tensor by tensor (saved activations,
gradients, optimiser state), which is exact on any device. Analytic FLOPs per token complete it.
"""

from __future__ import annotations

import copy
import statistics
import time
from functools import partial

import torch

from tinyattn.methods import build_model
from tinyattn.model import DEFAULT_BACKBONE, load_encoder
from tinyattn.records import machine, versions

TRAIN_METHODS = {  # bench name -> (registered method, options)
    "full_ft": ("full_ft", {}),
    "lora": ("lora", {}),
    "houlsby": ("houlsby", {}),
    "pfeiffer": ("pfeiffer", {}),
    "prefix": ("prefix", {}),
    "tinyattn_e1": ("tinyattn", {}),
    "tinyattn_e4": ("tinyattn", {"experts": 4}),
    "tinyattn_e4_stored": ("tinyattn", {"experts": 4}),  # activations kept, not recomputed
}
TINY_INFER = ("tinyattn_e4", "tinyattn_averaged")  # their adapters' share of a pass is timed too
INFER_METHODS = (
    "backbone",
    "tinyattn_e4",
    "tinyattn_averaged",
    "lora_unmerged",
    "lora_merged",
    "houlsby",
    "pfeiffer",
)


def _batch(batch_size: int, length: int, vocab: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, min(vocab, 20000), (batch_size, length), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _inference_model(name: str, encoder):
    """The deployed form of each method: merged / averaged where the method allows it."""
    from tinyattn.inject import average_experts

    if name == "backbone":
        return build_model("head_only", encoder, 2)
    if name in ("tinyattn_e4", "tinyattn_averaged"):
        model = build_model("tinyattn", encoder, 2, {"experts": 4})
        return average_experts(model) if name == "tinyattn_averaged" else model
    if name.startswith("lora"):
        model = build_model("lora", encoder, 2)
        with torch.no_grad():  # LoRA's B starts at zero; give it weights so merging is real work
            for pname, param in model.named_parameters():
                if "lora_B" in pname:
                    param.normal_(0, 0.01)
        if name == "lora_merged":
            model.encoder = model.encoder.merge_and_unload()
        return model
    return build_model(name, encoder, 2)


class AdapterClock:
    """Time spent inside a model's tiny-attention modules, measured around each call.

    The adapter's share of one forward pass is a ratio of two times from the same pass, so whatever
    the machine does between passes cancels; the backbone alone would take the rest of the pass.
    On a GPU the clock records CUDA events on the stream instead of synchronising around each
    module, so that timing the adapter does not slow the pass it is a share of.
    """

    def __init__(self, model, device: str = "cpu") -> None:
        from tinyattn.adapter import TinyAttention

        self._cuda = device.startswith("cuda")
        self._seconds, self._start, self._events = 0.0, 0.0, []
        layers = [m for m in model.modules() if isinstance(m, TinyAttention)]
        self._handles = [h for m in layers for h in self._attach(m)]

    def _attach(self, module):
        def start(*_):
            if self._cuda:
                self._events.append(torch.cuda.Event(enable_timing=True))
                self._events[-1].record()
            else:
                self._start = time.perf_counter()

        def stop(*_):
            if self._cuda:
                self._events.append(torch.cuda.Event(enable_timing=True))
                self._events[-1].record()
            else:
                self._seconds += time.perf_counter() - self._start

        return module.register_forward_pre_hook(start), module.register_forward_hook(stop)

    def reset(self) -> None:
        self._seconds, self._events = 0.0, []

    @property
    def seconds(self) -> float:
        """Time inside the modules since the last reset (on a GPU, once the stream has finished)."""
        if not self._cuda:
            return self._seconds
        torch.cuda.synchronize()
        pairs = zip(self._events[::2], self._events[1::2], strict=True)
        return sum(a.elapsed_time(b) for a, b in pairs) / 1000

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def dispatch_profile(model, batch: dict, passes: int = 5) -> dict:
    """What one inference pass asks of the machine: operator calls dispatched (``aten::`` calls, nested
    ones included) and, on a GPU, kernels launched and their summed device time. When the pass is short,
    each call's fixed cost (Python, dispatch, launch) rather than the arithmetic sets the latency."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = next(model.parameters()).is_cuda
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with torch.inference_mode():
        model(**batch)
        with profile(activities=activities) as prof:
            for _ in range(passes):
                model(**batch)
            if cuda:
                torch.cuda.synchronize()
    events = prof.events()
    ops = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith("aten::")]
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    return {
        "aten_calls_per_pass": len(ops) / passes,
        "kernels_per_pass": len(kernels) / passes,
        "kernel_ms_per_pass": sum(e.time_range.elapsed_us() for e in kernels) / passes / 1000,
    }


def _rotated(models: dict, rep: int) -> list:
    """The methods in an order that starts one further along each repetition: whatever the machine
    does to the first (or last) measurement of a round falls on every method alike."""
    items = list(models.items())
    shift = rep % len(items)
    return items[shift:] + items[:shift]


def _train_step(model, optim, batch: dict, labels: torch.Tensor) -> None:
    torch.nn.functional.cross_entropy(model(**batch), labels).backward()
    optim.step()
    optim.zero_grad(set_to_none=True)


def _timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


def _summary(times: list[float]) -> dict:
    q1, median, q3 = _quartiles(times)
    return {"median_s": median, "q1_s": q1, "q3_s": q3, "n": len(times), "times_s": times}


def paired_ratio(rows: dict, name: str, reference: str) -> dict:
    """``name``'s time over ``reference``'s, repetition by repetition (both ran in the same round, so
    drift in the machine's speed cancels): median and quartiles of the per-round ratios."""
    ratios = [a / b for a, b in zip(rows[name]["times_s"], rows[reference]["times_s"], strict=True)]
    q1, median, q3 = _quartiles(ratios)
    return {"median": median, "q1": q1, "q3": q3}


def training_memory_mb(model, batch: dict, labels: torch.Tensor) -> dict:
    """Memory one training step needs beyond the model's weights, counted tensor by tensor.

    Activations saved for the backward pass (each storage once, parameters excluded), the trainable
    parameters' gradients, and AdamW's two moments. Exact and the same on every device, unlike the
    process's resident-set peak on a CPU.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = torch.nn.functional.cross_entropy(model(**batch), labels)
    loss.backward()
    model.zero_grad(set_to_none=True)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    mb = 2**20
    return {
        "activations_mb": sum(saved.values()) / mb,
        "gradients_mb": trainable / mb,
        "optimizer_mb": 2 * trainable / mb,
        "total_mb": (sum(saved.values()) + 3 * trainable) / mb,
    }


def flops_per_token(
    method: str,
    hidden: int,
    layers: int,
    intermediate: int,
    length: int,
    options: dict | None = None,
) -> float:
    """Analytic forward FLOPs per token (multiply-add = 2 FLOPs) of the backbone plus the method."""
    D, n, d = hidden, length, (options or {}).get("head_dim", 1)
    backbone = layers * (2 * (4 * D * D + 2 * D * intermediate) + 4 * n * D)
    tiny = 2 * 3 * D * d + 4 * n * d + 2 * d * D  # q/k/v, scores and mixing, output; one expert
    extra = {
        "backbone": 0,
        "full_ft": 0,
        "lora_merged": 0,
        "lora": layers * 2 * 2 * (2 * D * 8),  # r = 8 on W_q and W_v: down and up projections
        "lora_unmerged": layers * 2 * 2 * (2 * D * 8),
        "houlsby": layers * 2 * 2 * (2 * D * (D // 16)),
        "pfeiffer": layers * 2 * (2 * D * (D // 16)),
        "prefix": layers * 4 * 30 * D,
        "tinyattn_e1": layers * tiny,
        "tinyattn_averaged": layers * tiny,
        "tinyattn_e4": layers * 4 * tiny,
        "tinyattn_e4_stored": layers * 4 * tiny,  # the default recomputes it again in backward
    }
    return float(backbone + extra[method])


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
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
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
        batch = {k: v.to(device) for k, v in _batch(batch_size, length, cfg.vocab_size).items()}
        labels = torch.zeros(batch_size, dtype=torch.long, device=device)
        # training step: forward + backward + AdamW step
        models, optims = {}, {}
        for name, (method, options) in TRAIN_METHODS.items():
            models[name] = build_model(method, copy.deepcopy(base), 2, options).to(device).train()
            if name.endswith("_stored"):
                for layer in models[name].tiny_attention.layers:
                    layer.recompute = False
            optims[name] = torch.optim.AdamW(
                [p for p in models[name].parameters() if p.requires_grad], lr=1e-5
            )
        times = {name: [] for name in models}
        for rep in range(warmup + repeats):
            for name, model in _rotated(models, rep):
                elapsed = _timed(partial(_train_step, model, optims[name], batch, labels), sync)
                if rep >= warmup:
                    times[name].append(elapsed)
        results["train"][str(length)] = {
            name: {
                **_summary(t),
                "tokens_per_s": batch_size * length / statistics.median(t),
                "memory": training_memory_mb(models[name], batch, labels),
            }
            for name, t in times.items()
        }
        del models, optims
        # inference: deployed forms, eval mode, no gradients
        infer = {
            name: _inference_model(name, copy.deepcopy(base)).to(device).eval()
            for name in INFER_METHODS
        }
        times = {name: [] for name in infer}
        clocks = {name: AdapterClock(infer[name], device) for name in TINY_INFER}
        shares = {name: [] for name in clocks}
        with torch.inference_mode():
            for rep in range(warmup + repeats):
                for name, model in _rotated(infer, rep):
                    if name in clocks:
                        clocks[name].reset()
                    elapsed = _timed(partial(model, **batch), sync)
                    if rep >= warmup:
                        times[name].append(elapsed)
                        if name in clocks:
                            shares[name].append(clocks[name].seconds / elapsed)
        results["inference"][str(length)] = {name: _summary(t) for name, t in times.items()}
        for clock in clocks.values():
            clock.remove()
        results.setdefault("inference_dispatch", {})[str(length)] = {
            name: dispatch_profile(infer[name], batch)
            for name in ("backbone", "tinyattn_averaged", "tinyattn_e4", "lora_merged")
        }
        for name, share in shares.items():
            q1, median, q3 = _quartiles(share)
            results["inference"][str(length)][name]["adapter_share"] = {
                "median": median,
                "q1": q1,
                "q3": q3,
            }
        del infer
        results["flops_per_token"][str(length)] = {
            name: flops_per_token(
                name, cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, length
            )
            for name in (*TRAIN_METHODS, *INFER_METHODS)
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
