"""The numbers the efficiency chapter quotes from ``tinyattn bench`` files, with the verdict on each
cost target (``tinyattn.analysis.verdicts``): one benchmark's ratios, the benchmark at each stage of
optimising the adapter, and the GPU processes before and after its GPU-specific changes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tinyattn.analysis import verdicts
from tinyattn.study.bench import read_bench


def _ratio_text(ratio: dict) -> str:
    return f"{ratio['median']:.3f} (quartiles {ratio['q1']:.3f}–{ratio['q3']:.3f})"


def bench_numbers(bench: dict) -> dict:
    """The numbers the efficiency chapter quotes from one ``tinyattn bench`` file, with the verdict
    on each target (``tinyattn.analysis.verdicts``)."""
    paired, share = bench["paired_inference_ratio"], bench["share_inference_ratio"]
    train, memory = bench["paired_train_step_ratio"], bench["peak_memory_mb"]
    kept, recomputed = train["tinyattn_e4_stored"], train["tinyattn_e4"]
    return {
        "bench_averaged_ratio": _ratio_text(paired["tinyattn_averaged"]),
        "bench_e4_ratio": _ratio_text(paired["tinyattn_e4"]),
        "bench_lora_merged_ratio": _ratio_text(paired["lora_merged"]),
        "bench_e4_train_ratio": _ratio_text(train["tinyattn_e4"]),
        "bench_e1_train_ratio": _ratio_text(train["tinyattn_e1"]),
        "bench_tiny_memory": round(memory["tinyattn_e4"], 1),
        "bench_e1_memory": round(memory["tinyattn_e1"], 1),
        "bench_lora_memory": round(memory["lora"], 1),
        "bench_share_ratio": _ratio_text(share["tinyattn_averaged"]),
        "bench_share_e4_ratio": _ratio_text(share["tinyattn_e4"]),
        "bench_latency_verdict": verdicts.ratio_target(share["tinyattn_averaged"], 1.03),
        "bench_latency_paired_verdict": verdicts.ratio_target(paired["tinyattn_averaged"], 1.03),
        "bench_train_verdict": verdicts.ratio_target(train["tinyattn_e4"], 1.10),
        "bench_memory_verdict": verdicts.memory_target(
            [memory["tinyattn_e4"], memory["tinyattn_e1"]], memory["lora"]
        ),
        "bench_stored_memory": round(memory["tinyattn_e4_stored"], 1),
        "bench_stored_train_ratio": _ratio_text(kept),
        "bench_recompute_cost": f"{100 * (recomputed['median'] / kept['median'] - 1):+.1f}",
        "bench_recompute_spread": verdicts.within_spread(kept, recomputed),
    }


def bench_stages(files: dict[str, str | Path]) -> pd.DataFrame:
    """The benchmark at each stage of optimising the adapter (``files``: stage -> bench file; a
    missing file is left out), one column per stage named with its commit and processor (ratios from
    two processors differ as their speeds for the backbone's GEMMs and the adapter's passes do)."""
    rows = {}
    for label, path in files.items():
        if not Path(path).exists():
            continue
        data = read_bench(path)
        p_inf, p_train = data["paired_inference_ratio"], data["paired_train_step_ratio"]
        share = data.get("share_inference_ratio", {}).get("tinyattn_averaged", {})
        processor = data["machine"]["processor"]
        rows[f"{label} ({data['git']['commit'][:7]}, {processor})"] = {
            "averaged / backbone (inference)": p_inf["tinyattn_averaged"]["median"],
            "E = 4 / backbone (inference)": p_inf["tinyattn_e4"]["median"],
            "E = 1 / LoRA (training step)": p_train["tinyattn_e1"]["median"],
            "E = 4 / LoRA (training step)": p_train["tinyattn_e4"]["median"],
            "E = 4 memory MB": data["peak_memory_mb"]["tinyattn_e4"],
            "averaged / backbone (in-pass share)": share.get("median", float("nan")),
        }
    return pd.DataFrame(rows).round(3)


def processor_numbers(there: str | Path, here: str | Path) -> dict:
    """One code benchmarked on two processors (two bench files of the same commit, ``there`` where
    the targets were set and ``here``): the numbers the efficiency chapter quotes from them."""
    a, b = read_bench(there), read_bench(here)
    if a["git"]["commit"] != b["git"]["commit"]:
        raise ValueError(f"{there} and {here} benchmark different commits: not one code")
    numbers = {
        "processor_commit": a["git"]["commit"][:7],
        "processor_there": a["machine"]["processor"],
        "processor_here": b["machine"]["processor"],
    }
    for where, data in (("there", a), ("here", b)):
        numbers[f"processor_share_{where}"] = _ratio_text(
            data["share_inference_ratio"]["tinyattn_averaged"]
        )
        numbers[f"processor_e4_train_{where}"] = _ratio_text(
            data["paired_train_step_ratio"]["tinyattn_e4"]
        )
        numbers[f"processor_backbone_ms_{where}"] = round(
            1000 * data["inference"][str(max(data["lengths"]))]["backbone"]["median_s"]
        )
    return numbers


def gpu_numbers(gpu: pd.DataFrame, benches: dict[str, dict], layers: int = 6) -> dict:
    """The numbers the efficiency chapter quotes from its GPU runs, one benchmark per process:
    ``gpu`` is their ``bench.runs_table`` with a column ``code`` (``"before"`` or ``"after"`` the
    adapter's GPU-specific changes); ``layers`` the backbone's (MiniLM-L6)."""
    small = gpu[gpu["batch × tokens"] == "32 × 128"]
    large = gpu[gpu["batch × tokens"] == "128 × 512"]

    def spread(rows, column: str) -> str:
        return f"{rows[column].min():.2f}–{rows[column].max():.2f}"

    def median(rows, column: str) -> float:
        return round(float(rows[column].median()), 3)

    numbers = {}
    for code in ("before", "after"):
        s, lg = small[small["code"] == code], large[large["code"] == code]
        added = median(s, "kernels per pass, averaged") - median(s, "kernels per pass, backbone")
        numbers |= {
            f"gpu_small_{code}_runs": len(s),
            f"gpu_small_{code}_ratio": spread(s, "averaged / backbone"),
            f"gpu_small_{code}_kernel_time": median(s, "kernel time, averaged / backbone"),
            f"gpu_small_{code}_kernels_per_layer": round(added / layers, 1),
            f"gpu_large_{code}_ratio": median(lg, "averaged / backbone"),
            f"gpu_large_{code}_share": median(lg, "averaged, in-pass share"),
            f"gpu_large_{code}_kernel_time": median(lg, "kernel time, averaged / backbone"),
            f"gpu_large_{code}_e4": median(lg, "E = 4 / backbone"),
            f"gpu_large_{code}_train": median(lg, "E = 4 / LoRA (training step)"),
        }
    before, after = small[small["code"] == "before"], small[small["code"] == "after"]
    after_benches = [benches[name] for name in after.index]
    stored = [b["paired_train_step_ratio"]["tinyattn_e4_stored"]["median"] for b in after_benches]
    others = {
        m: [b["paired_inference_ratio"][m]["median"] for b in after_benches]
        for m in ("houlsby", "pfeiffer", "lora_unmerged")
    }
    return numbers | {
        "gpu_backbone_kernels": int(median(small, "kernels per pass, backbone")),
        "gpu_small_backbone_ms": f"{small['backbone ms'].min():.1f}–{small['backbone ms'].max():.1f}",
        "gpu_small_backbone_kernel_ms": spread(small, "backbone kernel ms"),
        "gpu_small_overlap": verdicts.ranges_apart(
            before["averaged / backbone"], after["averaged / backbone"]
        ),
        "gpu_null_spread": spread(gpu, "merged LoRA / backbone (null control)"),
        "gpu_small_train": spread(after, "E = 4 / LoRA (training step)"),
        "gpu_small_stored_train": f"{min(stored):.2f}–{max(stored):.2f}",
        "gpu_small_others": ", ".join(
            f"{m.replace('_', ' ')} {min(v):.2f}–{max(v):.2f}" for m, v in others.items()
        ),
    }
