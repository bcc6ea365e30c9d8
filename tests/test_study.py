"""Profiles -> planned runs -> the runner (papermill or processes, resume after a kill, shards) ->
a study's status; bad input named; the package's imports flow one way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from conftest import TOY, fake_record, records

from tinyattn.cli import main as cli
from tinyattn.records import record_status, write_json_atomic
from tinyattn.study import runner
from tinyattn.study.profiles import (
    PROFILES_DIR,
    TASK_SIZES,
    as_profile,
    estimate_seconds,
    expand,
    load_profile,
    parse_shard,
    placeholder_rates,
    shard,
)
from tinyattn.study.runner import TRAIN_NOTEBOOK, run_study
from tinyattn.study.status import plan, profile_runs
from tinyattn.study.tuning import planned_runs
from tinyattn.tasks import FEWSHOT_TASKS, GLUE_TASKS


@pytest.fixture
def toy(write_toy):
    """A two-run profile in a fresh working folder."""
    return write_toy(TOY)


@pytest.mark.e2e
def test_runner_end_to_end_through_papermill(toy, capsys):
    outcome = run_study(str(toy), log=lambda msg: None)
    assert outcome == {"done": 2, "failed": 0, "skipped": 0}
    found = records()
    planned = expand(load_profile(str(toy)))
    assert set(found) == {p.run_id for p in planned}
    assert all(r["status"] == "done" for r in found.values())
    for params in planned:  # the executed notebook is kept where a user can open it
        assert (Path("results/executed") / f"{params.run_id}.ipynb").is_file()
    # a second start runs nothing
    assert run_study(str(toy), log=lambda msg: None) == {"done": 0, "failed": 0, "skipped": 0}
    assert cli(["study", "--profile", str(toy), "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in dry["runs"]] == ["done", "done"]
    assert dry["estimated_cpu_hours"] == 0
    assert {"run_id", "task", "method", "seed", "status"} <= set(dry["runs"][0])


@pytest.mark.e2e
def test_runner_without_notebooks_writes_the_same_records(toy):
    outcome = run_study(str(toy), executor="process", log=lambda msg: None)
    assert outcome == {"done": 2, "failed": 0, "skipped": 0}
    found = records()
    planned = expand(load_profile(str(toy)))
    assert set(found) == {p.run_id for p in planned}
    for params in planned:
        record = found[params.run_id]
        assert record["status"] == "done" and record["params"]["label"] == params.label
        assert record["steps"] == 1 and record["provenance"]["git"]
        assert (Path("results/executed") / f"{params.run_id}.log").is_file()
        assert not (Path("results/executed") / f"{params.run_id}.ipynb").exists()


@pytest.mark.e2e
def test_process_executor_records_a_run_that_dies(toy, monkeypatch):
    profile = yaml.safe_load(toy.read_text())
    profile["methods"] = {"nope": {"method": "head_only", "learning_rate": 1.0e-3}}
    profile["defaults"]["max_length"] = -1  # fails inside the run, after the runner checked types
    toy.write_text(yaml.safe_dump(profile))
    outcome = run_study(str(toy), executor="process", log=lambda msg: None)
    assert outcome["failed"] == 1
    (record,) = records().values()
    assert record["status"] == "failed" and record["error"]


def test_process_jobs_each_get_a_gpu_of_their_own(toy, monkeypatch):
    """Several GPUs, several jobs: every run of the process executor sees one GPU, never one another
    run holds at the same time; one job, or no GPU, changes nothing."""
    profile = yaml.safe_load(toy.read_text())
    profile["seeds"] = [1, 2, 3]  # six runs
    toy.write_text(yaml.safe_dump(profile))
    seen, running, lock = [], set(), threading.Lock()

    def fake(params, gpu=None):
        with lock:
            assert gpu not in running, "two runs on one GPU at once"
            running.add(gpu)
            seen.append(gpu)
        time.sleep(0.05)
        with lock:
            running.discard(gpu)
        return "not run"

    monkeypatch.setattr(runner, "_run_process", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    run_study(str(toy), executor="process", jobs=2, log=lambda msg: None)
    assert len(seen) == 6 and set(seen) == {"3", "5"}
    seen.clear()
    for path in Path("results/runs").glob("*.json"):
        path.unlink()  # the fake runs' failed records
    run_study(str(toy), executor="process", jobs=1, log=lambda msg: None)
    assert seen == [None] * 6
    assert runner.visible_gpus() == ["3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert runner.visible_gpus() == []


def test_time_limit_starts_nothing_after_it_and_leaves_the_rest_pending(toy):
    outcome = run_study(str(toy), executor="process", time_limit=0, log=lambda msg: None)
    assert outcome == {"done": 0, "failed": 0, "skipped": 0, "not_started": 2}
    assert not records()
    assert all(record_status(p.run_id) == "pending" for p in expand(load_profile(str(toy))))
    with pytest.raises(ValueError, match="unknown executor 'gpu'"):
        run_study(str(toy), executor="gpu", log=lambda msg: None)


@pytest.mark.e2e
def test_kill_and_resume_runs_everything_exactly_once(toy):
    profile = yaml.safe_load(toy.read_text())
    profile["seeds"] = [1, 2]  # four runs
    toy.write_text(yaml.safe_dump(profile))
    command = [sys.executable, "-m", "tinyattn.cli", "study", "--profile", str(toy)]
    first = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while not records() and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # the runner and its papermill kernel, mid-grid
    first.wait()
    done_before = {k: Path(f"results/runs/{k}.json").stat().st_mtime_ns for k in records()}
    assert 1 <= len(done_before) < 4
    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600
    )
    found = records()
    planned = {p.run_id for p in expand(load_profile(str(toy)))}
    assert set(found) == planned and len(found) == 4
    assert all(r["status"] == "done" for r in found.values())
    for run_id, mtime in done_before.items():  # finished runs were not redone
        assert Path(f"results/runs/{run_id}.json").stat().st_mtime_ns == mtime
    assert not list(Path("results/runs/.locks").glob("*.lock"))


@pytest.mark.e2e
def test_truncated_record_is_redone(toy):
    planned = expand(load_profile(str(toy)))
    target = Path("results/runs") / f"{planned[0].run_id}.json"
    target.parent.mkdir(parents=True)
    target.write_text('{"run_id": "' + planned[0].run_id + '", "status": "do')  # cut off mid-write
    assert record_status(planned[0].run_id) == "pending"
    run_study(str(toy), log=lambda msg: None)
    assert json.loads(target.read_text())["status"] == "done"
    assert list(target.parent.glob(f"{target.name}.corrupt-*"))  # kept aside, not lost


def test_shards_partition_the_grid():
    runs = planned_runs("cpu", untuned_ok=True)
    ids = [r.run_id for r in runs]
    assert len(ids) == len(set(ids))
    for n in (1, 2, 3, 4, 7):
        parts = [shard(runs, k, n) for k in range(1, n + 1)]
        union = [r.run_id for part in parts for r in part]
        assert sorted(union) == sorted(ids)  # every run in exactly one shard
        for part in parts:  # a (task, seed) group is never split: two-stage runs find their twin
            groups = {(r.task, r.seed) for r in part}
            assert all((r.task, r.seed) in groups for r in runs if r in part)
    assert [r.run_id for r in shard(runs, 2, 4)] == [r.run_id for r in shard(runs, 2, 4)]
    with pytest.raises(ValueError, match="K/N"):
        parse_shard("2-4")
    with pytest.raises(ValueError, match="between 1 and N"):
        parse_shard("5/4")


def test_profiles_expand_and_estimate(tmp_path):
    quick = plan("quick", out_dir=str(tmp_path))  # an empty results folder: every run pending
    assert len(quick["runs"]) == 12 and 0 < quick["estimated_cpu_hours"] <= 0.5
    cpu = plan("cpu", out_dir=str(tmp_path))
    assert {r["task"] for r in cpu["runs"]} == {"rte", "mrpc", "stsb", "cola", "sst2"}
    assert 0 < cpu["estimated_cpu_hours"] < 40
    per_method = {}
    for row in cpu["runs"]:
        per_method.setdefault(row["method"], []).append(row)
    assert len({len(v) for v in per_method.values()}) == 1  # every method gets every task and seed
    assert cpu["tuning"] == "tune" and set(cpu["counts"]) >= {"awaiting tuning"}


@pytest.mark.parametrize("name", sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
def test_every_committed_profile_plans_from_the_committed_records(name):
    """What ``tinyattn study --profile NAME --dry-run`` prints, for every file in ``profiles/``: it
    loads, expands with its tuning profile's committed rates, and every run has a cost estimate."""
    status = plan(name, out_dir=str(PROFILES_DIR.parent / "results" / "runs"))
    assert status["runs"], name
    assert "awaiting tuning" not in status["counts"], name  # the committed tune records suffice
    assert status["estimated_cpu_hours"] >= 0


def test_every_task_has_the_sizes_the_planning_estimate_needs():
    """A task added to ``tasks.py`` needs its split sizes and mean lengths in ``TASK_SIZES``."""
    assert set(TASK_SIZES) == set(GLUE_TASKS) | set(FEWSHOT_TASKS)


def test_tuning_and_ablations_share_the_cpu_studys_budget(tmp_path):
    cpu, tune, ablations = (load_profile(n) for n in ("cpu", "tune", "ablations"))
    pilot = load_profile("tune_rte")  # the stopped RTE half of the first tuning grid
    for task, budget in (tune["tasks"] | pilot["tasks"]).items():
        assert budget == cpu["tasks"][task]  # same epochs and caps as the study they tune

    def training(defaults: dict) -> dict:  # what shapes training (evaluations and selection aside)
        return {
            k: v for k, v in defaults.items() if k not in ("heldout_fraction", "evals_per_epoch")
        }

    assert training(tune["defaults"]) == training(cpu["defaults"]) == training(pilot["defaults"])
    assert tune["defaults"]["heldout_fraction"] == pilot["defaults"]["heldout_fraction"]
    tuned = {label for label in cpu["methods"]} - {"tinyattn_e4"}
    assert set(tune["methods"]) == tuned  # every method tuned (E = 4 borrows E = 1's rate)
    for label, method in tune["methods"].items():
        # the first grid's three rates, then rates above it, each about 3x the last (1-3-10)
        first, rates = pilot["methods"][label]["learning_rates"], method["learning_rates"]
        assert rates[:3] == first and len(rates) >= 4
        assert all(b / a == pytest.approx(3.16, rel=0.06) for a, b in zip(rates[2:], rates[3:]))
    # the ablations train as the cpu study does, but keep their last weights, so they share no run
    assert training(ablations["defaults"]) == training(cpu["defaults"]) | {"restore_best": False}
    for task, budget in ablations["tasks"].items():
        assert {k: v for k, v in budget.items() if k != "methods"} == cpu["tasks"][task]
    ablation_runs = planned_runs(ablations, str(tmp_path), untuned_ok=True)
    assert len(ablation_runs) == 15 * 2 * 3 and not any(r.restore_best for r in ablation_runs)
    shared = {r.run_id for r in planned_runs(cpu, str(tmp_path), untuned_ok=True)} & {
        r.run_id for r in ablation_runs
    }
    assert not shared


def test_unknown_profile_and_bad_parameter_types_are_named(toy, capsys):
    with pytest.raises(ValueError, match="unknown study profile 'nope'.*quick"):
        load_profile("nope")
    assert cli(["study", "--profile", "nope", "--dry-run"]) == 2
    assert "unknown study profile" in capsys.readouterr().err
    profile = yaml.safe_load(toy.read_text())
    profile["defaults"]["epochs"] = "three"
    toy.write_text(yaml.safe_dump(profile))
    with pytest.raises(TypeError, match="'epochs' must be float or int, got 'three'"):
        expand(load_profile(str(toy)))


def test_a_pinned_profile_runs_only_from_its_commit_unless_told(toy, monkeypatch, capsys):
    """`tinyattn study` refuses to make a pinned profile's pending runs with other code (they would
    carry the same run ids as the pinned code's), says how, and runs with --any-code; a pinned
    profile with nothing left to run (the cpu study) is not refused."""
    started = []
    monkeypatch.setattr(
        runner, "run_study", lambda profile, **kw: started.append(profile) or {"failed": 0}
    )
    pinned = toy.with_name("pinned.yaml")
    pinned.write_text(yaml.safe_dump(TOY | {"name": "pinned", "code": "47152b3"}))
    assert cli(["study", "--profile", str(pinned)]) == 2
    err = capsys.readouterr().err
    assert "'pinned' is pinned (code: 47152b3)" in err and "tinyattn/adapter.py" in err
    assert "git worktree add <dir> 47152b3" in err and "--any-code" in err and not started
    assert cli(["study", "--profile", str(pinned), "--any-code"]) == 0 and started == [str(pinned)]
    records_dir = str(Path(__file__).resolve().parent.parent / "results" / "runs")
    assert cli(["study", "--profile", "cpu", "--out", records_dir]) == 0
    assert started[-1] == "cpu"


@pytest.mark.e2e
def test_notebook_rejects_a_parameter_of_the_wrong_type(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="run parameter 'seed' must be int"):
        papermill.execute_notebook(
            str(TRAIN_NOTEBOOK),
            str(tmp_path / "out.ipynb"),
            parameters={"seed": "42"},
            progress_bar=False,
            kernel_name="python3",
        )


def test_training_notebook_declares_every_run_parameter():
    import papermill

    from tinyattn.experiment import RunParams

    assert set(RunParams.names()) <= set(papermill.inspect_notebook(str(TRAIN_NOTEBOOK)))


@pytest.mark.e2e
def test_tuning_grid_on_heldout_data_then_a_tuned_profile(tmp_path, data_dir, monkeypatch):
    """A learning-rate grid scored on held-out training data; a study then takes the chosen rate."""
    from tinyattn.study.tuning import TuningIncompleteError, select_learning_rates, selection_table

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYATTN_DATA_DIR", str(data_dir))
    tune = {
        **TOY,
        "name": "toytune",
        "defaults": {**TOY["defaults"], "heldout_fraction": 0.25, "max_eval_samples": None},
        "methods": {"head_only": {"method": "head_only", "learning_rates": [1.0e-4, 1.0e-1]}},
    }
    study = {
        **TOY,
        "name": "toystudy",
        "tuning": str(tmp_path / "toytune.yaml"),
        "methods": {"head_only": {"method": "head_only"}},
    }
    (tmp_path / "toytune.yaml").write_text(yaml.safe_dump(tune))
    (tmp_path / "toystudy.yaml").write_text(yaml.safe_dump(study))
    assert plan(str(tmp_path / "toystudy.yaml"))["counts"]["awaiting tuning"] == 1
    with pytest.raises(TuningIncompleteError, match="2 of 2 runs not done"):
        run_study(str(tmp_path / "toystudy.yaml"), log=lambda msg: None)

    assert run_study(str(tmp_path / "toytune.yaml"), log=lambda msg: None)["done"] == 2
    for record in records().values():
        assert record["eval_split"] == "heldout 0.25 of train"
        assert (record["train_examples"], record["eval_examples"]) == (12, 4)  # 16 split 3:1
    table = selection_table(str(tmp_path / "toytune.yaml"))
    assert table["chosen"].sum() == 1
    chosen = select_learning_rates(str(tmp_path / "toytune.yaml"))
    assert chosen["head_only"] == table.loc[table["chosen"], "learning_rate"].item()
    (planned,) = planned_runs(str(tmp_path / "toystudy.yaml"))
    assert planned.learning_rate == chosen["head_only"] and planned.heldout_fraction is None


def test_work_units_keep_two_stage_runs_after_their_twin_and_nothing_else_together():
    from tinyattn.study.runner import work_units

    runs = planned_runs("ablations", untuned_ok=True)
    units = work_units(runs)
    assert sorted(r.run_id for u in units for r in u) == sorted(r.run_id for r in runs)
    for unit in units:
        ids = [r.run_id for r in unit]
        if len(unit) > 1:  # one E = 1 twin, then the E = 2, 4, 8 runs that start from it
            assert not unit[0].two_stage and all(r.two_stage for r in unit[1:])
            assert {r.stage_one().run_id for r in unit[1:]} == {ids[0]}
    assert sum(len(u) > 1 for u in units) == 2 * 3  # one per (task, seed)
    # task by task in the profile's order, the longest units of a task first
    tasks = [u[0].task for u in units]
    assert tasks == sorted(tasks, key=list(load_profile("ablations")["tasks"]).index)
    for task in set(tasks):
        cost = [sum(estimate_seconds(r) for r in u) for u in units if u[0].task == task]
        assert cost == sorted(cost, reverse=True) and len(units[tasks.index(task)]) > 1
    assert len(work_units([r for r in runs if not r.two_stage])) == sum(
        not r.two_stage for r in runs
    )


def test_portable_notebook_drops_the_checkouts_location(tmp_path):
    from tinyattn.study.runner import REPO, installed_packages_dirs, portable_notebook

    root = str(REPO.resolve())
    elsewhere = tmp_path / "env" / "site-packages"  # a virtual environment outside the checkout
    elsewhere.mkdir(parents=True)
    linked = tmp_path / "linked"  # ... reached through a link
    linked.symlink_to(tmp_path / "env")
    notebook = {
        "metadata": {"papermill": {"input_path": f"{root}/notebooks/experts.ipynb"}},
        "cells": [
            {
                "outputs": [
                    {"name": "stderr", "text": [f"{root}/.venv/lib/x.py:1: Warning\n"]},
                    {"name": "stderr", "text": [f"{elsewhere}/tqdm/auto.py:21: Warning\n"]},
                ]
            }
        ],
    }
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(notebook))
    portable_notebook(path, packages=[linked / "site-packages", elsewhere])
    text = path.read_text()
    assert root not in text and str(tmp_path) not in text
    tidied = json.loads(text)
    assert tidied["metadata"]["papermill"]["input_path"] == "notebooks/experts.ipynb"
    outputs = tidied["cells"][0]["outputs"]
    assert outputs[0]["text"] == [".venv/lib/x.py:1: Warning\n"]
    assert outputs[1]["text"] == ["<site-packages>/tqdm/auto.py:21: Warning\n"]
    assert any(str(d).endswith("-packages") for d in installed_packages_dirs())


# ----------------------------------------------------------------------------- profiles, one way
def test_a_profile_with_a_yaml_syntax_error_is_named_with_its_line(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nseeds: [1, 2\ntasks: {sst2: {}}\nmethods: {a: {}}\n")
    with pytest.raises(ValueError, match=rf"profile {broken}: invalid YAML at line 3, column 6"):
        load_profile(str(broken))
    assert cli(["study", "--profile", str(broken), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err  # one line, no traceback
    assert err.startswith(f"tinyattn study: error: profile {broken}: invalid YAML at line 3")
    broken.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="is not a mapping"):
        load_profile(str(broken))
    broken.write_text("tasks: {sst2: {}}\nmethods: {a: {}}\nseeds: 13\n")
    with pytest.raises(ValueError, match="'seeds' must be a non-empty list"):
        load_profile(str(broken))


def test_a_tuned_profile_expands_only_with_its_rates():
    cpu = load_profile("cpu")
    with pytest.raises(ValueError, match="takes its learning rates from tuning profile 'tune'"):
        expand(cpu)
    rates = placeholder_rates(load_profile("tune"))
    runs = expand(cpu, rates | {"tinyattn_e1": 0.5})
    for label in ("tinyattn_e1", "tinyattn_e4"):  # E = 4 borrows E = 1's rate (tuned_as)
        assert {r.learning_rate for r in runs if r.label == label} == {0.5}
    assert {r.learning_rate for r in runs if r.label == "lora"} == {rates["lora"]}
    with pytest.raises(ValueError, match="method 'lora' has no tuned learning rate"):
        expand(cpu, {k: v for k, v in rates.items() if k != "lora"})


def one_epoch_record(params, score: float, status: str = "done") -> dict:
    """A record of a planned run, as the aggregation and the tuning tables read it."""
    return fake_record(params, [score], status=status)


def test_profile_runs_gives_a_study_status_from_its_records(tmp_path):
    """Planned, waiting for tuning, tuned, partly done, complete: on a tiny runs folder."""
    runs_dir = str(tmp_path / "runs")
    tune = {
        **TOY,
        "name": "toytune",
        "defaults": {**TOY["defaults"], "heldout_fraction": 0.25},
        "methods": {"head_only": {"method": "head_only", "learning_rates": [1e-4, 1e-3, 1e-2]}},
    }
    study = {**TOY, "name": "toystudy", "tuning": str(tmp_path / "toytune.yaml"), "seeds": [1, 2]}
    study["methods"] = {"head_only": {"method": "head_only"}, "lora": {"tuned_as": "head_only"}}
    (tmp_path / "toytune.yaml").write_text(yaml.safe_dump(tune))
    (tmp_path / "toystudy.yaml").write_text(yaml.safe_dump(study))

    waiting = profile_runs(str(tmp_path / "toystudy.yaml"), runs_dir)
    assert not waiting.tuned and "3 of 3 runs not done" in waiting.waiting
    assert len(waiting.planned) == 4 and {p.learning_rate for p in waiting.planned} == {1e-3}
    assert waiting.runs.empty and waiting.done == 0 and not waiting.complete
    assert waiting.profile["name"] == "toystudy"

    for params, score in zip(expand(tune, out_dir=runs_dir), (0.6, 0.7, 0.9), strict=True):
        write_json_atomic(Path(runs_dir) / f"{params.run_id}.json", one_epoch_record(params, score))
    tuned = profile_runs(str(tmp_path / "toystudy.yaml"), runs_dir)
    assert tuned.tuned and tuned.waiting is None and tuned.done == 0 and not tuned.complete
    assert {p.learning_rate for p in tuned.planned} == {1e-2}  # the grid's best held-out score
    assert [p.run_id for p in tuned.planned] == [
        p.run_id for p in planned_runs(str(tmp_path / "toystudy.yaml"), runs_dir)
    ]

    first, *rest = tuned.planned
    write_json_atomic(Path(runs_dir) / f"{first.run_id}.json", one_epoch_record(first, 0.8))
    failed = one_epoch_record(rest[0], 0.0, status="failed")  # a failed run is not a finished one
    write_json_atomic(Path(runs_dir) / f"{rest[0].run_id}.json", failed)
    partly = profile_runs(str(tmp_path / "toystudy.yaml"), runs_dir)
    assert partly.done == 1 and list(partly.runs["run_id"]) == [first.run_id]
    assert partly.runs["score"].tolist() == [80.0] and not partly.complete
    assert not partly.complete_for([first.label]) and not partly.complete_for(["lora"])
    dry = plan(str(tmp_path / "toystudy.yaml"), runs_dir)
    assert dry["counts"] == {"done": 1, "pending": 2, "failed": 1}

    for params in rest:
        write_json_atomic(Path(runs_dir) / f"{params.run_id}.json", one_epoch_record(params, 0.75))
    done = profile_runs(str(tmp_path / "toystudy.yaml"), runs_dir)
    assert done.complete and done.done == 4 and set(done.runs["method"]) == {"head_only", "lora"}
    assert done.complete_for(["lora"]) and not done.complete_for(["no_such_method"])
    assert not waiting.complete_for(["head_only"])  # nothing counts before the rates are chosen
    # a profile that names no tuning is tuned as it stands; nothing of it has run here
    alone = profile_runs(as_profile(str(tmp_path / "toytune.yaml")), str(tmp_path / "empty"))
    assert alone.tuned and alone.waiting is None and alone.done == 0 and len(alone.planned) == 3


@pytest.mark.parametrize("executor", ["notebook", "process"])
def test_either_executor_records_a_run_that_died_before_recording(toy, executor, monkeypatch):
    """A kernel or process that ends without writing the run's record: the runner writes the failed
    record, the same one for both executors."""
    notebook = TRAIN_NOTEBOOK
    if executor == "notebook":  # the notebook's parameters, then a cell that fails at once
        from tinyattn.experiment import RunParams

        cells = [
            {
                "cell_type": "code",
                "id": "parameters",
                "metadata": {"tags": ["parameters"]},
                "source": "\n".join(f"{name} = None" for name in RunParams.names()),
                "outputs": [],
                "execution_count": None,
            },
            {
                "cell_type": "code",
                "id": "dies",
                "metadata": {},
                "source": "raise RuntimeError('died early')",
                "outputs": [],
                "execution_count": None,
            },
        ]
        notebook = Path("dies.ipynb")
        kernel = {"name": "python3", "display_name": "Python 3", "language": "python"}
        notebook.write_text(
            json.dumps(
                {
                    "cells": cells,
                    "metadata": {"kernelspec": kernel},
                    "nbformat": 4,
                    "nbformat_minor": 5,
                }
            )
        )
    else:
        monkeypatch.setattr(runner, "PROCESS_CODE", "import sys; print('died early'); sys.exit(3)")
    profile = yaml.safe_load(toy.read_text())
    profile["methods"] = {"head_only": profile["methods"]["head_only"]}
    toy.write_text(yaml.safe_dump(profile))
    (params,) = expand(load_profile(str(toy)))

    outcome = run_study(str(toy), executor=executor, notebook=notebook, log=lambda msg: None)
    assert outcome == {"done": 0, "failed": 1, "skipped": 0}
    (record,) = records().values()
    assert set(record) == {"run_id", "status", "params", "error"}
    assert record["run_id"] == params.run_id and record["status"] == "failed"
    assert record["params"] == asdict(params) and "died early" in record["error"]
    assert record_status(params.run_id) == "failed"
    assert run_study(str(toy), executor=executor, notebook=notebook, log=lambda m: None) == {
        "done": 0,
        "failed": 0,
        "skipped": 0,
    }  # a failed run is not retried without --retry-failed


def test_a_profile_with_an_invalid_method_option_is_refused_when_it_loads(tmp_path, capsys):
    """Not at the start of each run: the file, the method's label and the option are named, and the
    dry run stops with one line."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "seeds: [1]\ntasks: {sst2: {epochs: 1}}\n"
        "methods: {wide: {method: tinyattn, method_options: {experts: -3}}}\n"
    )
    with pytest.raises(ValueError, match=rf"profile {bad}: method 'wide' \(sst2\): .*experts"):
        load_profile(str(bad))
    assert cli(["study", "--profile", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "experts must be a positive integer" in err
    bad.write_text(
        "seeds: [1]\ntasks: {sst2: {methods: {e: {method_options: {combine: max}}}}}\n"
        "methods: {e: {method: tinyattn}}\n"
    )
    with pytest.raises(ValueError, match=r"method 'e' \(sst2\): .*combine 'max'"):
        load_profile(str(bad))
    bad.write_text("seeds: [1]\ntasks: {sst2: {}}\nmethods: {x: {method: nope}}\n")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        load_profile(str(bad))


def test_roles_name_the_profiles_own_labels_and_a_renamed_label_is_refused_at_load(tmp_path):
    from tinyattn.study.profiles import ROLES, role

    path = tmp_path / "roles.yaml"
    path.write_text(yaml.safe_dump(TOY | {"roles": {"reference": "tinyattn_e1"}}))
    assert role(load_profile(path), "reference") == "tinyattn_e1"
    with pytest.raises(ValueError, match="gives no method the role 'experts'"):
        role(load_profile(path), "experts")
    renamed = dict(TOY["methods"])
    renamed["one_expert"] = renamed.pop("tinyattn_e1")  # a label renamed, its role left behind
    path.write_text(
        yaml.safe_dump(TOY | {"methods": renamed, "roles": {"reference": "tinyattn_e1"}})
    )
    with pytest.raises(ValueError, match=r"role 'reference' names 'tinyattn_e1', which is not one"):
        load_profile(path)
    path.write_text(yaml.safe_dump(TOY | {"roles": {"referee": "tinyattn_e1"}}))
    with pytest.raises(ValueError, match="unknown role 'referee'"):
        load_profile(path)
    # the committed studies give the roles the analysis reads
    assert role("ablations", "expert_counts") == ["tinyattn_e2", "tinyattn_e4", "tinyattn_e8"]
    assert {role(name, "reference") for name in ("cpu", "budget", "ablations")} == {"tinyattn_e1"}
    assert set(load_profile("ablations")["roles"]) <= set(ROLES)
