"""(The diagnostic as run, lint-formatted.) Why a bf16 tiny-attention run on the GPU takes 30 s where LoRA takes 0.6 s: time variants."""

import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, "tests")
import test_cuda as t
import torch
from accelerate.state import AcceleratorState
from torch.profiler import ProfilerActivity, profile

from tinyattn.adapter import TinyAttention


class F:
    def mktemp(self, n):
        return pathlib.Path(tempfile.mkdtemp())


setup = t.offline_setup.__wrapped__(F())


def go(name, precision, method="tinyattn", options=None, two_stage=False, **kw):
    AcceleratorState._reset_state(reset_partial_state=True)
    os.environ["ACCELERATE_MIXED_PRECISION"] = precision
    torch.cuda.synchronize()
    tick = time.perf_counter()
    r, _ = t.run(
        t.gpu_params(
            setup,
            pathlib.Path(tempfile.mkdtemp()),
            method=method,
            method_options=options or {},
            two_stage=two_stage,
            epochs=3,
            **kw,
        )
    )
    torch.cuda.synchronize()
    print(
        f"{name:40s} wall {time.perf_counter() - tick:7.2f}s train {r['train_seconds']:6.2f}s "
        f"eval {r['eval_seconds']:6.2f}s acc {r['final']['metrics']['accuracy']:.3f}",
        flush=True,
    )


go("warm-up lora fp32", "no", method="lora")
go("tinyattn E1 fp32", "no")
go("tinyattn E1 fp32 again", "no")
go("lora bf16", "bf16", method="lora")
go("tinyattn E1 bf16", "bf16")
go("tinyattn E1 bf16 again", "bf16")
torch.backends.cuda.enable_cudnn_sdp(False)
go("tinyattn E1 bf16, no cudnn sdp", "bf16")
torch.backends.cuda.enable_cudnn_sdp(True)
TinyAttention.pad_heads = "never"
go("tinyattn E1 bf16, heads unpadded", "bf16")
TinyAttention.pad_heads = "cuda"
torch.backends.cuda.enable_flash_sdp(False)
go("tinyattn E1 bf16, no flash", "bf16")
torch.backends.cuda.enable_flash_sdp(True)
torch.backends.cuda.enable_mem_efficient_sdp(False)
go("tinyattn E1 bf16, no mem-efficient", "bf16")
torch.backends.cuda.enable_mem_efficient_sdp(True)
AcceleratorState._reset_state(reset_partial_state=True)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    go("tinyattn E1 bf16 profiled", "bf16", seed=6)
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))
