"""A profile's shard run elsewhere (``tinyattn.study.shards``, ``notebooks/shard_colab.ipynb``): the
command a shard runs, the zip of its done records with their adapters that ``tinyattn merge`` takes
back, and the book's table of the big profiles, before and after a GPU measurement exists."""

from __future__ import annotations

import json
import math
import sys
import zipfile
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import fake_record

from tinyattn.cli import main as cli
from tinyattn.records import adapter_dir, write_json_atomic
from tinyattn.study import shards
from tinyattn.study.merge import merge
from tinyattn.study.profiles import expand, load_profile

REPO = Path(__file__).resolve().parent.parent
# Two tasks x two seeds: shard 1/2 holds the (task, seed) groups of seed 1, shard 2/2 those of seed 2.
TOY = {
    "backbone": "minilm-l6",
    "seeds": [1, 2],
    "defaults": {"max_steps": 1, "batch_size": 8, "max_train_samples": 16, "max_eval_samples": 16},
    "tasks": {"sst2": {}, "rte": {}},
    "methods": {
        "head_only": {"method": "head_only", "learning_rate": 1.0e-3},
        "tinyattn_e1": {"method": "tinyattn", "learning_rate": 1.0e-3, "save_adapter": True},
    },
}


@pytest.fixture
def toy(tmp_path) -> tuple[Path, Path]:
    """A small profile and a runs folder: every run done (the tiny-attention ones with an adapter)
    except seed 1's head-only run on RTE, which failed."""
    profile, runs = tmp_path / "toy.yaml", tmp_path / "runs"
    profile.write_text(yaml.safe_dump(TOY))
    for params in expand(load_profile(profile), out_dir=str(runs)):
        failed = (params.task, params.seed, params.label) == ("rte", 1, "head_only")
        made = fake_record(params, [0.7, 0.8], status="failed" if failed else "done")
        made["config"] = asdict(params.train_config())
        git = {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False}
        made["provenance"] = {"git": git, "versions": {"torch": "2.13.0"}, "machine": {}}
        write_json_atomic(runs / f"{params.run_id}.json", made)
        if params.label == "tinyattn_e1":
            adapter_dir(params.run_id, runs).mkdir(parents=True)
            (adapter_dir(params.run_id, runs) / "adapter_config.json").write_text('{"w": 1}')
    return profile, runs


def runs_of(profile: Path, seed: int, runs: Path) -> dict[str, str]:
    """run id -> label of the profile's runs of one seed."""
    planned = expand(load_profile(profile), out_dir=str(runs))
    return {p.run_id: p.label for p in planned if p.seed == seed}


def expected_zip(profile: Path, runs: Path) -> set[str]:
    """What shard 1/2's zip must hold: seed 1's done records, and the adapters of tiny attention's."""
    names = set()
    for run_id, label in runs_of(profile, 1, runs).items():
        if json.loads((runs / f"{run_id}.json").read_text())["status"] != "done":
            continue
        names.add(f"runs/{run_id}.json")
        if label == "tinyattn_e1":
            names.add(f"runs/adapters/{run_id}/adapter_config.json")
    return names


# ----------------------------------------------------------------------------- one shard
def test_the_archive_name_and_the_study_command_of_a_shard(toy):
    profile, runs = toy
    assert shards.archive_name("paper", "2/4") == "records-paper-shard-2-of-4.zip"
    assert shards.archive_name(profile, None) == "records-toy-shard-1-of-1.zip"
    with pytest.raises(ValueError, match="K must be between 1 and N"):
        shards.archive_name("paper", "5/4")

    plan = shards.study_command(profile, "1/2", runs_dir=runs, time_limit=90, dry_run=True)
    assert plan[1:] == ["-m", "tinyattn.cli", "study", "--profile", str(profile)] + [
        "--shard", "1/2", "--out", str(runs), "--dry-run"
    ]  # fmt: skip
    train = shards.study_command("paper", "3/4", time_limit=90, retry_failed=True)
    assert train[-9:] == [
        "--out", "results/runs", "--executor", "process", "--jobs", "1", "--time-limit", "90",
        "--retry-failed",
    ]  # fmt: skip
    merging = shards.merge_command(["a.zip", Path("b")], runs)
    assert merging[1:] == ["-m", "tinyattn.cli", "merge", "a.zip", "b", "--into", str(runs)]
    lines: list[str] = []
    script = "import sys; print('first'); print('second', file=sys.stderr); sys.exit(3)"
    assert shards.run_command([sys.executable, "-c", script], log=lines.append) == 3
    assert lines == ["first", "second"]  # both streams, line by line, in order
    assert not shards.in_colab()


def test_the_zip_holds_the_shards_done_records_and_merges_back(toy, tmp_path):
    profile, runs = toy
    archive = shards.zip_shard(profile, "1/2", runs, tmp_path / "out")
    assert archive.path == tmp_path / "out" / "records-toy-shard-1-of-2.zip"
    with zipfile.ZipFile(archive.path) as bundle:
        assert set(bundle.namelist()) == expected_zip(profile, runs)
    seed_one = runs_of(profile, 1, runs)
    assert archive.planned == len(seed_one) == 4
    assert set(archive.records) | set(archive.failed) == set(seed_one)
    assert (len(archive.records), archive.adapters, len(archive.failed)) == (3, 2, 1)
    assert archive.summary() == (
        "records-toy-shard-1-of-2.zip: 3 of the shard's 4 runs (2 with their adapter); "
        "1 failed and 0 pending runs left out"
    )

    into = tmp_path / "merged"
    report = merge([archive.path], into, profiles=[profile])
    assert report.ok and report.counts()["toy"]["new"] == 3, report.problems()
    assert {p.stem for p in into.glob("*.json")} == set(archive.records)
    assert len(list((into / "adapters").iterdir())) == 2
    # a shard with nothing done yet leaves an empty zip, not an error
    empty = shards.zip_shard(profile, "2/2", tmp_path / "no-runs", tmp_path / "out")
    assert (empty.records, len(empty.pending)) == ([], 4)


@pytest.mark.e2e
def test_the_colab_notebook_plans_and_zips_the_shard_without_training(toy, tmp_path):
    """Executed here as papermill would in Colab, but outside it: ``dry_run = None`` only plans, then
    the zip of the shard's records is left in ``archive_dir`` and ``tinyattn merge`` takes it; a
    second session given that zip (``resume_from``) starts from its records."""
    papermill = pytest.importorskip("papermill")
    profile, runs = toy
    before = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.json")}
    out = tmp_path / "executed.ipynb"
    parameters = {
        "profile": str(profile),
        "shard": "1/2",
        "runs_dir": str(runs),
        "archive_dir": str(tmp_path / "out"),
    }
    papermill.execute_notebook(
        str(REPO / "notebooks" / "shard_colab.ipynb"),
        str(out),
        parameters=parameters,
        cwd=str(REPO / "notebooks"),
        progress_bar=False,
    )
    text = out.read_text()
    assert "a dry run: nothing is trained" in text
    assert "{'done': 3, 'pending': 0, 'failed': 1}" in text  # the shard's plan, as the runner says
    assert "records-toy-shard-1-of-2.zip: 3 of the shard's 4 runs" in text
    assert {p.name: p.stat().st_mtime_ns for p in runs.glob("*.json")} == before  # nothing ran
    archive = tmp_path / "out" / "records-toy-shard-1-of-2.zip"
    with zipfile.ZipFile(archive) as bundle:
        assert set(bundle.namelist()) == expected_zip(profile, runs)

    into = tmp_path / "merged"
    assert cli(["merge", str(archive), "--into", str(into)]) == 0
    records = {Path(name).stem for name in expected_zip(profile, runs) if name.count("/") == 1}
    assert {p.stem for p in into.glob("*.json")} == records
    assert len(list((into / "adapters").iterdir())) == 2

    # a new session, resumed from that zip: its records are merged in first, then zipped again
    parameters |= {"runs_dir": str(tmp_path / "session-2"), "resume_from": str(archive)}
    parameters["archive_dir"] = str(tmp_path / "out-2")
    papermill.execute_notebook(
        str(REPO / "notebooks" / "shard_colab.ipynb"), str(out), parameters=parameters,
        cwd=str(REPO / "notebooks"), progress_bar=False,
    )  # fmt: skip
    assert "{'done': 3, 'pending': 1, 'failed': 0}" in out.read_text()  # the failed run: pending
    with zipfile.ZipFile(tmp_path / "out-2" / archive.name) as bundle:
        assert set(bundle.namelist()) == expected_zip(profile, runs)


def test_the_notebook_is_papermill_parameterised_and_installs_like_the_others():
    import nbformat

    notebook = nbformat.read(REPO / "notebooks" / "shard_colab.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    values: dict = {}
    exec(cell.source, values)  # plain assignments only
    assert (values["profile"], values["shard"], values["executor"]) == ("paper", "1/4", "process")
    assert values["dry_run"] is None and values["time_limit"] > 0
    source = "".join(c.source for c in notebook.cells)
    assert '"pip", "install", "-q", "-U", "pip"' in source  # pip first, as the other notebooks
    assert "shards.offer_download(" in source and "shards.zip_shard(" in source
    assert "shard_colab" not in (REPO / "_toc.yml").read_text()  # the book never executes it


# ----------------------------------------------------------------------------- the book's table
def planned_frame() -> pd.DataFrame:
    """Planned runs as ``report.planned_runs`` gives them: two of paper_budget's with a CPU-hour
    estimate, one of paper's without (a backbone not meant for a CPU)."""
    return pd.DataFrame(
        {
            "profile": ["paper_budget", "paper_budget", "paper", "fewglue"],
            "backbone": ["minilm-l6", "minilm-l6", "roberta-large", "albert/albert-xxlarge-v2"],
            "task": ["rte", "mrpc", "rte", "fewcb"],
            "cpu_hours": [1.5, 2.0, math.nan, math.nan],
        }
    )


def measurement(*profiles: str, tiny: bool = False) -> dict:
    """A GPU measurement as ``scripts/gpu_measure.sh`` leaves it, with made-up seconds per step."""
    from tinyattn.study import gpu_bench as gb

    configs = {}
    for name in profiles:
        run = gb.measured_run(name)
        points = [(256, 0.05), (8192, 0.4)]
        configs[name] = {
            "profile": name,
            "backbone": run.backbone,
            "protocol": run.protocol,
            "run": {"method": run.method, "method_options": run.method_options},
            "points": [{"tokens_per_step": t, "seconds_per_step": s} for t, s in points],
        }
    return {
        "kind": "gpu_bench",
        "tiny": tiny,
        "complete": False,
        "device": {"type": "cuda", "name": "a test GPU"},
        "git": {"commit": "fedcba9876543210"},
        "configs": configs,
    }


def test_without_a_measurement_the_table_has_no_gpu_hours_and_says_they_are_pending(tmp_path):
    assert shards.gpu_estimates(measurement=tmp_path / "gpu.json") is None
    table = shards.scale_table(planned_frame(), {"paper": 1})
    assert "GPU-hours" not in table.columns
    assert table.loc["paper_budget", "CPU-hours"] == 3.5
    assert math.isnan(table.loc["paper", "CPU-hours"])
    assert table["runs"].to_dict() == {"paper_budget": 2, "paper": 1, "fewglue": 1}
    assert table["done"].to_dict() == {"paper_budget": 0, "paper": 1, "fewglue": 0}
    assert table["GPUs per run"].to_dict() == {"paper_budget": 0, "paper": 1, "fewglue": 1}
    status = shards.gpu_status(None)
    assert status.startswith("**GPU-hours: pending.**")
    assert "`bash scripts/gpu_measure.sh`" in status and "results/bench/gpu.json" in status


def test_a_measurement_fills_the_gpu_hours_in(tmp_path):
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(measurement("paper", "paper_budget")))
    gpu = shards.gpu_estimates(measurement=path)
    assert gpu["measurement"]["device"] == "a test GPU" and not gpu["measurement"]["complete"]
    table = shards.scale_table(planned_frame(), {}, gpu)
    assert table.loc["paper", "GPU-hours"] == pytest.approx(gpu["paper"]["gpu_hours"])
    assert table.loc["paper", "GPU-hours"] > 0
    assert math.isnan(table.loc["fewglue", "GPU-hours"])  # its backbone was not measured
    status = shards.gpu_status(gpu)
    assert "measured on a test GPU (code fedcba9" in status and "cut short" in status
    assert "None for `fewglue` (no measurement of backbone" in status

    path.write_text(json.dumps(measurement("paper", tiny=True)))
    with pytest.raises(ValueError, match="tiny or was made on a CPU"):
        shards.gpu_estimates(measurement=path)
