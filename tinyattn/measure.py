"""Measuring what a model's passes cost, shared by the cost benchmark (``bench``) and the experts
analysis (``deployment``): time, the time spent inside some modules, the memory of a training step, and
what a pass dispatches.

Timing follows one protocol: candidates take turns in an order that rotates every repetition
(``rotated``), each call is timed between two device synchronisations (``timed``), and a candidate's repetitions are
summarised by their median and quartiles (``summary``); two candidates timed in the same rounds are
compared round by round (``paired_ratio``), so that drift in the machine's speed cancels.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronizer(device: str | torch.device) -> Callable[[], None]:
    """What waits for ``device`` to finish its queued work: CUDA's synchronise, or nothing on a CPU."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def rotated(items: dict, rep: int) -> list:
    """``items``' (key, value) pairs in an order that starts one further along each repetition: whatever
    the machine does to the first (or last) measurement of a round falls on every candidate alike."""
    pairs = list(items.items())
    shift = rep % len(pairs)
    return pairs[shift:] + pairs[:shift]


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    """Seconds that ``fn()`` takes, the device synchronised before and after (``synchronizer``)."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile (all three the value itself when there is one)."""
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


def summary(times: list[float]) -> dict:
    """Repeated timings as median, quartiles, count and the raw times (seconds)."""
    q1, median, q3 = quartiles(times)
    return {"median_s": median, "q1_s": q1, "q3_s": q3, "n": len(times), "times_s": times}


def paired_ratio(rows: dict, name: str, reference: str) -> dict:
    """``name``'s time over ``reference``'s, repetition by repetition (both ran in the same round, so
    drift in the machine's speed cancels): median and quartiles of the per-round ratios. ``rows``:
    name -> ``summary(...)``."""
    ratios = [a / b for a, b in zip(rows[name]["times_s"], rows[reference]["times_s"], strict=True)]
    q1, median, q3 = quartiles(ratios)
    return {"median": median, "q1": q1, "q3": q3}


class ModuleClock:
    """Time spent inside some modules of a model (e.g. its tiny-attention adapters), measured around
    each call.

    The modules' share of one forward pass is a ratio of two times from the same pass, so whatever
    the machine does between passes cancels. On a GPU the clock records CUDA events on the stream
    instead of synchronising around each module, so that timing the modules does not slow the pass
    they are a share of.
    """

    def __init__(self, modules, device: str = "cpu") -> None:
        self._cuda = str(device).startswith("cuda")
        self._seconds, self._start, self._events = 0.0, 0.0, []
        self._handles = [h for m in modules for h in self._attach(m)]

    def _mark(self, *_) -> None:
        self._events.append(torch.cuda.Event(enable_timing=True))
        self._events[-1].record()

    def _start_cpu(self, *_) -> None:
        self._start = time.perf_counter()

    def _stop_cpu(self, *_) -> None:
        self._seconds += time.perf_counter() - self._start

    def _attach(self, module):
        start, stop = (self._mark, self._mark) if self._cuda else (self._start_cpu, self._stop_cpu)
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
        self._handles = []


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
