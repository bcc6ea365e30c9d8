"""The Ray executor on a local Ray instance started here (``ray.init(num_cpus=2)``), with a tiny
profile: every run done exactly once, the same metrics as the process executor, a worker killed in
the middle of a run retried without loss or duplicate, two drivers on one grid, the time limit."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import TOY, records

from tinyattn.study.profiles import expand, load_profile, resources
from tinyattn.study.runner import run_study

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("ray")]

RAY_TOY = TOY | {
    "seeds": [1, 2],
    "defaults": TOY["defaults"] | {"max_steps": 2},
    "methods": {
        "head_only": TOY["methods"]["head_only"],
        "tinyattn_e1": TOY["methods"]["tinyattn_e1"] | {"save_adapter": True},
        "tinyattn_e2": {
            "method": "tinyattn",
            "method_options": {"experts": 2},
            "two_stage": True,
            "learning_rate": 1.0e-3,
        },
    },
}
METRICS = ("best", "final", "steps", "params_count")


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def toy(write_toy, local_ray):
    return write_toy(RAY_TOY)


def quiet(message: str) -> None:
    pass


def assert_all_done_once(toy, outcome: dict, folder="results/runs") -> dict[str, dict]:
    planned = {p.run_id for p in expand(load_profile(str(toy)))}
    found = records(folder)
    assert set(found) == planned
    assert all(r["status"] == "done" for r in found.values())
    assert not list(Path(folder).glob("**/.*.tmp")), "a half-written file was left"
    assert not list((Path(folder) / ".locks").glob("*.lock")), "a lock was left"
    return found


def test_every_run_once_with_the_process_executors_metrics(toy):
    outcome = run_study(str(toy), executor="ray", out_dir="ray", log=quiet)
    assert outcome == {"done": 6, "failed": 0, "skipped": 0}
    by_ray = assert_all_done_once(toy, outcome, "ray")
    for record in by_ray.values():  # written by the driver, in the driver's folder
        assert record["params"]["out_dir"] == "ray"
        assert "tinyattn-ray-" not in json.dumps(record)
    planned = expand(load_profile(str(toy)))
    for params in planned:  # the E = 1 twins' adapters came back with their records
        if params.save_adapter:
            assert any((Path("ray") / "adapters" / params.run_id).iterdir())
    assert run_study(str(toy), executor="ray", out_dir="ray", log=quiet) == {
        "done": 0,
        "failed": 0,
        "skipped": 0,
    }
    run_study(str(toy), executor="process", out_dir="process", jobs=2, log=quiet)
    by_process = records("process")
    for run_id, record in by_ray.items():
        for key in METRICS:
            assert record[key] == by_process[run_id][key], (run_id, key)


def test_a_worker_killed_mid_run_is_retried_without_loss_or_duplicate(toy):
    killed = []

    def kill_one_worker() -> None:
        deadline = time.time() + 120
        while not killed and time.time() < deadline:
            for pid in running_tasks():
                time.sleep(1.0)  # inside the run: loading the model, training
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    outcome = run_study(str(toy), executor="ray", log=quiet)
    killer.join()
    assert killed, "no task was seen running"
    assert outcome == {"done": 6, "failed": 0, "skipped": 0}
    assert_all_done_once(toy, outcome)


def running_tasks() -> list[int]:
    """The processes running a ``train_unit`` task now (Ray names them ``ray::train_unit``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if re.match(r"ray::train_unit\b", command):
                found.append(int(entry.name))
    return found


def test_two_drivers_on_one_grid_never_run_a_run_twice(toy):
    address = ray.get_runtime_context().gcs_address
    second = subprocess.Popen(
        [sys.executable, "-m", "tinyattn.cli", "study", "--profile", str(toy)]
        + ["--executor", "ray", "--address", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120  # the second driver claims its first runs before the first starts
    while not list(Path("results/runs/.locks").glob("*.lock")) and time.time() < deadline:
        time.sleep(0.1)
    first = run_study(str(toy), executor="ray", log=quiet)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output[-3000:]
    found = re.search(r"study .*toy.yaml: (\{.*\})", output)
    assert found, output[-3000:]
    other = yaml.safe_load(found.group(1))
    assert first["done"] + other["done"] == 6, (first, other)
    assert other["done"] >= 1 and first["skipped"] >= 1, (first, other)
    assert first["failed"] == other["failed"] == 0
    assert_all_done_once(toy, first)


def test_time_limit_resources_and_a_failing_run(toy):
    outcome = run_study(str(toy), executor="ray", time_limit=-1, log=quiet)
    assert outcome == {"done": 0, "failed": 0, "skipped": 0, "not_started": 6}
    assert not records()
    assert resources(str(toy)) == {"cpus": 1, "gpus": 0}
    assert resources("paper") == {"cpus": 1, "gpus": 1}
    profile = yaml.safe_load(toy.read_text())
    profile["methods"] = {"nope": {"method": "head_only", "learning_rate": 1.0e-3}}
    profile["seeds"] = [1]
    profile["defaults"]["max_length"] = -1  # fails inside the run, on the worker
    toy.write_text(yaml.safe_dump(profile))
    outcome = run_study(str(toy), executor="ray", log=quiet)
    assert outcome == {"done": 0, "failed": 1, "skipped": 0}
    (record,) = records().values()
    assert record["status"] == "failed" and record["error"] and record["traceback"]
    profile["resources"] = {"gpus": -1}
    toy.write_text(yaml.safe_dump(profile))
    with pytest.raises(ValueError, match="resources 'gpus' must be a number >= 0"):
        load_profile(str(toy))


def test_a_two_stage_run_takes_its_saved_twin_adapter_along(tmp_path):
    from tinyattn.records import adapter_dir
    from tinyattn.study.ray_executor import _twin_adapters

    two_stage = next(p for p in expand(RAY_TOY) if p.two_stage)
    twin = adapter_dir(two_stage.stage_one().run_id, tmp_path)
    (twin / "nested").mkdir(parents=True)
    (twin / "adapter.safetensors").write_bytes(b"weights")
    (twin / "nested" / "config.json").write_bytes(b"{}")
    shipped = _twin_adapters([two_stage], str(tmp_path))
    assert shipped == {
        str((twin / "adapter.safetensors").relative_to(tmp_path)): b"weights",
        str((twin / "nested" / "config.json").relative_to(tmp_path)): b"{}",
    }
    assert _twin_adapters([p for p in expand(RAY_TOY) if not p.two_stage], str(tmp_path)) == {}
