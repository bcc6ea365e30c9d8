"""The reproduce check: a rerun compared with its record metric by metric, the reasons a run differs,
the policy (pinned profiles, stale records), the ``code:`` pin in profiles, and the CLI."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tinyattn.cli import main as cli
from tinyattn.records import record_path
from tinyattn.study import reproduce as rp
from tinyattn.study.profiles import load_profile, validate
from tinyattn.study.status import profile_runs

REPO = Path(__file__).resolve().parent.parent


def record(commit="a" * 40, **metrics) -> dict:
    """A synthetic finished record with the given best (= final) metrics."""
    metrics = metrics or {"accuracy": 0.80, "f1": 0.75}
    return {
        "run_id": "sst2-tinyattn-s42-0123456789",
        "status": "done",
        "task": "sst2",
        "seed": 42,
        "method": "tinyattn",
        "device": "cpu",
        "params": {"label": "tinyattn_e1", "task": "sst2", "seed": 42},
        "best": {"step": 10, "metrics": dict(metrics)},
        "final": {"step": 20, "metrics": dict(metrics)},
        "provenance": {
            "git": {"commit": commit, "dirty": False, "changed_files": []},
            "versions": {"python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "4.57.6"},
            "machine": {"processor": "AMD EPYC", "gpu": None, "torch_threads": 2},
        },
    }


def no_code_change(old, new):
    return []


def adapter_changed(old, new):
    return ["tinyattn/adapter.py", "tinyattn/fastpath.py"]


# ----------------------------------------------------------------------------- comparing runs
def test_identical_runs_match():
    row = rp.compare_run(record(), record(), changes=no_code_change)
    assert row["status"] == "match"
    assert row["largest_difference"] == 0.0
    assert {(m["which"], m["metric"]) for m in row["metrics"]} == {
        ("best", "accuracy"),
        ("best", "f1"),
        ("final", "accuracy"),
        ("final", "f1"),
    }
    summary = rp.summarise("toy", None, 1e-3, [row], [])
    assert summary["passed"] and summary["counts"]["match"] == 1


def test_difference_within_tolerance_matches_and_beyond_it_fails_naming_the_metric():
    again = record()
    again["final"]["metrics"]["f1"] = 0.75 + 5e-4
    assert rp.compare_run(record(), again, 1e-3, changes=no_code_change)["status"] == "match"
    again["final"]["metrics"]["f1"] = 0.75 + 5e-3
    row = rp.compare_run(record(), again, 1e-3, changes=no_code_change)
    assert row["status"] == "unexplained"
    assert row["largest_difference"] == pytest.approx(5e-3)
    outside = [m for m in row["metrics"] if not m["within"]]
    assert [(m["which"], m["metric"]) for m in outside] == [("final", "f1")]
    summary = rp.summarise("toy", None, 1e-3, [row], [])
    assert not summary["passed"]
    assert "final f1: recorded 0.750000, rerun 0.755000" in rp.format_summary(summary)


def test_a_metric_missing_from_the_rerun_is_outside_any_tolerance():
    again = record()
    del again["best"]["metrics"]["f1"]
    row = rp.compare_run(record(), again, 1.0, changes=no_code_change)
    assert row["status"] == "unexplained"
    assert [m["metric"] for m in row["metrics"] if not m["within"]] == ["f1"]


def test_changed_code_explains_a_pinned_profile_and_makes_an_unpinned_one_stale():
    old, new = record("a" * 40), record("b" * 40, accuracy=0.81, f1=0.75)
    unpinned = rp.compare_run(old, new, 1e-3, changes=adapter_changed)
    assert unpinned["status"] == "stale"
    (reason,) = [r for r in unpinned["reasons"] if r["kind"] == "code"]
    assert reason["explains"] and "tinyattn/adapter.py" in reason["text"]
    assert "aaaaaaa" in reason["text"] and "bbbbbbb" in reason["text"]
    assert not rp.summarise("toy", None, 1e-3, [unpinned], [])["passed"]
    new["provenance"]["versions"]["torch"] = "2.11.0+cu130"  # code changed: stale all the same
    assert rp.compare_run(old, new, 1e-3, changes=adapter_changed)["status"] == "stale"
    pinned = rp.compare_run(old, new, 1e-3, pinned="aaaaaaa", changes=adapter_changed)
    assert pinned["status"] == "explained"
    assert rp.summarise("toy", "aaaaaaa", 1e-3, [pinned], [])["passed"]
    frozen = rp.compare_run(old, new, 1e-3, changes=adapter_changed, frozen=True)
    assert (
        frozen["status"] == "explained"
    )  # records kept as made: the code explains, nothing is stale
    assert (
        rp.compare_run(record("a" * 40), record("a" * 40, f1=0.75), 1e-3, frozen=True)["status"]
        == "unexplained"
    )  # frozen excuses a code change only


def test_another_commit_with_the_same_training_code_explains_nothing():
    old, new = record("a" * 40), record("b" * 40, accuracy=0.81, f1=0.75)
    row = rp.compare_run(old, new, 1e-3, changes=no_code_change)
    assert row["status"] == "unexplained"
    assert any("same training code" in r["text"] for r in row["reasons"])


def test_a_commit_outside_the_history_is_named():
    old, new = record("a" * 40), record("b" * 40, accuracy=0.7, f1=0.75)
    row = rp.compare_run(old, new, 1e-3, changes=lambda a, b: None)
    assert row["status"] == "stale"
    assert any("not in this checkout's history" in r["text"] for r in row["reasons"])


def test_threads_versions_and_devices_explain_a_difference():
    old = record()
    new = copy.deepcopy(old)
    new["best"]["metrics"]["accuracy"] = 0.9
    assert rp.compare_run(old, new, 1e-3, changes=no_code_change)["status"] == "unexplained"
    new["provenance"]["machine"]["torch_threads"] = 1
    row = rp.compare_run(old, new, 1e-3, changes=no_code_change)
    assert row["status"] == "explained"
    assert [r["kind"] for r in row["reasons"]] == ["threads"]
    assert "torch threads 2 -> 1" in row["reasons"][0]["text"]
    new["provenance"]["machine"]["torch_threads"] = 2
    new["provenance"]["versions"]["torch"] = "2.11.0+cu130"
    new["device"] = "cuda"
    new["provenance"]["machine"]["gpu"] = "NVIDIA H100"
    row = rp.compare_run(old, new, 1e-3, changes=no_code_change)
    assert row["status"] == "explained"
    texts = " | ".join(r["text"] for r in row["reasons"])
    assert "torch 2.13.0+cpu -> 2.11.0+cu130" in texts and "device cpu -> cuda" in texts


def test_uncommitted_changes_to_training_code_are_reasons_others_are_not():
    old, new = record(), record(accuracy=0.9, f1=0.75)
    new["provenance"]["git"].update(dirty=True, changed_files=["book/intro.md"])
    assert rp.compare_run(old, new, 1e-3, changes=no_code_change)["status"] == "unexplained"
    new["provenance"]["git"]["changed_files"] = ["tinyattn/adapter.py"]
    row = rp.compare_run(old, new, 1e-3, changes=no_code_change)
    assert row["status"] == "stale"
    assert any("uncommitted changes to tinyattn/adapter.py" in r["text"] for r in row["reasons"])


def test_a_record_of_a_pinned_profile_made_elsewhere_is_reported():
    row = rp.compare_run(
        record("c" * 40), record("a" * 40), pinned="aaaaaaa", changes=no_code_change
    )
    assert row["status"] == "match"
    (pin,) = [r for r in row["reasons"] if r["kind"] == "pin"]
    assert "ccccccc, not the pinned aaaaaaa (same training code)" in pin["text"]


def test_a_rerun_that_did_not_finish_fails():
    failed = {"run_id": "x", "status": "failed", "error": "RuntimeError: boom"}
    row = rp.compare_run(record(), failed, changes=no_code_change)
    assert row["status"] == "failed" and "boom" in row["reasons"][0]["text"]
    assert rp.compare_run(record(), None, changes=no_code_change)["status"] == "failed"
    assert not rp.summarise("toy", None, 1e-3, [row], [])["passed"]


# ----------------------------------------------------------------------------- the code a run runs
def test_training_paths_follow_the_imports_of_a_run():
    paths = rp.training_paths()
    for path in ("tinyattn/experiment.py", "tinyattn/adapter.py", "tinyattn/fastpath.py"):
        assert path in paths
    assert "notebooks/train.ipynb" in paths
    for path in (
        "tinyattn/analysis/aggregate.py",
        "tinyattn/analysis/verdicts.py",
        "tinyattn/records.py",
    ):
        assert path not in paths


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def toy_repo(tmp_path):
    """A git repository whose run imports tinyattn.adapter but not tinyattn.analysis.aggregate."""
    if shutil.which("git") is None:
        pytest.skip("no git")
    (tmp_path / "tinyattn").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "tinyattn" / "experiment.py").write_text("from tinyattn.adapter import A\n")
    (tmp_path / "tinyattn" / "adapter.py").write_text("A = 1\n")
    (tmp_path / "tinyattn" / "aggregate.py").write_text("B = 1\n")
    (tmp_path / "notebooks" / "train.ipynb").write_text("{}\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    return tmp_path


def commit_all(root: Path, message: str) -> str:
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", message)
    return git(root, "rev-parse", "HEAD")


def test_code_changes_name_the_training_files_between_commits(toy_repo):
    first = git(toy_repo, "rev-parse", "HEAD")
    (toy_repo / "tinyattn" / "aggregate.py").write_text("B = 2\n")
    second = commit_all(toy_repo, "reporting only")
    assert rp.code_changes(first, second, toy_repo) == []
    (toy_repo / "tinyattn" / "adapter.py").write_text("A = 2\n")
    third = commit_all(toy_repo, "the method")
    assert rp.code_changes(first, third, toy_repo) == ["tinyattn/adapter.py"]
    assert rp.code_changes(first[:7], None, toy_repo) == ["tinyattn/adapter.py"]
    assert rp.code_changes("1234567", third, toy_repo) is None
    (toy_repo / "notebooks" / "train.ipynb").write_text('{"cells": []}\n')  # uncommitted
    assert rp.code_changes(third, None, toy_repo) == ["notebooks/train.ipynb"]
    assert rp.pin_problem({"code": third[:7]}, toy_repo) == (
        f"this checkout's code differs from commit {third[:7]} in notebooks/train.ipynb"
    )
    assert rp.pin_problem({}, toy_repo) is None


# ----------------------------------------------------------------------------- the pin in profiles
def test_profiles_pin_their_commit_and_a_bad_pin_is_named(tmp_path):
    assert load_profile("cpu")["code"] == "47152b3"
    assert load_profile("ablations")["code"] == "603739b"
    assert "code" not in load_profile("quick")
    base = {"tasks": {"sst2": {}}, "methods": {"lora": {}}, "seeds": [1]}
    validate(base | {"code": "47152b3"})
    validate(base | {"code": "a" * 40})
    for bad in (1234567, "main", "47152B3", "abc", "a" * 41):
        with pytest.raises(ValueError, match="'code' must name a git commit"):
            validate(base | {"code": bad})
    path = tmp_path / "pinned.yaml"
    path.write_text(yaml.safe_dump(base) + "code: 1234567\n")
    with pytest.raises(ValueError, match="quote it"):
        load_profile(path)


def test_profiles_that_others_are_planned_from_are_frozen_and_say_why():
    assert "cpu" in load_profile("tune")["frozen"]  # its rates choose the cpu study's run ids
    assert {"code", "frozen"} & set(load_profile("quick")) == set()
    base = {"tasks": {"sst2": {}}, "methods": {"lora": {}}, "seeds": [1]}
    validate(base | {"frozen": "kept"})
    for bad in ("", "  ", True, 3):
        with pytest.raises(ValueError, match="'frozen' must say why"):
            validate(base | {"frozen": bad})
    with pytest.raises(ValueError, match="either pinned .'code'. or 'frozen'"):
        validate(base | {"frozen": "kept", "code": "47152b3"})


# ----------------------------------------------------------------------------- the check, end to end
def fake_execute(shift: dict[str, float]):
    """An executor that 'reruns' a run by copying its committed record, moving some metrics."""

    def run(params, executor="notebook"):
        again = json.loads(record_path(params.run_id, "results/runs").read_text())
        for metric, delta in shift.get(params.label, {}).items():
            if metric in again["final"]["metrics"]:
                again["final"]["metrics"][metric] += delta
        record_path(params.run_id, params.out_dir).write_text(json.dumps(again))
        return again

    return run


@pytest.fixture
def at_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_reproduce_reruns_the_recorded_runs_into_a_fresh_folder(at_repo, monkeypatch, tmp_path):
    calls = []
    copy_run = fake_execute({"lora": {"pearson": 0.01}})
    monkeypatch.setattr(rp, "execute", lambda p, e: calls.append(p.out_dir) or copy_run(p, e))
    summary = rp.reproduce("quick", tmp_path / "again", runs=["lora", "head_only"], log=lambda m: 0)
    assert calls and set(calls) == {str(tmp_path / "again")}
    assert {r["label"] for r in summary["runs"]} == {"lora", "head_only"}
    by_label = {(r["label"], r["task"]): r for r in summary["runs"]}
    assert by_label[("head_only", "sst2")]["status"] == "match"
    assert by_label[("lora", "stsb")]["status"] == "unexplained"
    assert not summary["passed"]
    # runs done in the folder are compared, not rerun
    calls.clear()
    rp.reproduce("quick", tmp_path / "again", runs=["head_only"], log=lambda m: 0)
    assert calls == []


def test_a_pinned_profile_is_not_rerun_from_other_code(at_repo, monkeypatch, tmp_path):
    pinned = load_profile("quick") | {"code": "1234567"}
    monkeypatch.setattr(rp, "execute", fake_execute({}))
    with pytest.raises(rp.PinnedCodeError, match="pinned .code: 1234567.*--any-code"):
        rp.reproduce(pinned, tmp_path / "p", runs=["head_only"], log=lambda m: 0)
    summary = rp.reproduce(pinned, tmp_path / "p", runs=["head_only"], any_code=True, log=print)
    assert summary["code"] == "1234567" and summary["passed"]


def test_tuning_records_are_copied_only_for_runs_made_from_another_checkout(
    at_repo, monkeypatch, tmp_path
):
    tuned = load_profile("cpu") | {"code": "1234567"}  # planned from the `tune` profile's records
    tuning = set(profile_runs(tuned["tuning"], "results/runs").runs["run_id"])
    run = sorted(profile_runs(tuned, "results/runs").runs["run_id"])[0]
    monkeypatch.setattr(rp, "execute", fake_execute({}))
    here = tmp_path / "here"
    rp.reproduce(tuned, here, runs=[run], any_code=True, log=lambda m: 0)
    assert {p.stem for p in here.glob("*.json")} == {run}
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(rp.PinnedCodeError, match="holds the records it plans from"):
        rp.reproduce(tuned, elsewhere, runs=[run], log=lambda m: 0)
    assert {p.stem for p in elsewhere.glob("*.json")} == tuning


def test_a_frozen_profile_is_rerun_from_this_checkout_and_says_so(at_repo, monkeypatch, tmp_path):
    frozen = load_profile("quick") | {"frozen": "kept as made"}
    monkeypatch.setattr(rp, "execute", fake_execute({}))
    summary = rp.reproduce(frozen, tmp_path / "f", runs=["head_only"], log=lambda m: 0)
    assert summary["frozen"] == "kept as made" and summary["passed"]
    assert "(frozen: records kept as made)" in rp.format_summary(summary)


def test_runs_that_name_nothing_are_an_error(at_repo, tmp_path):
    with pytest.raises(ValueError, match="--runs 'nope' names no recorded run"):
        rp.reproduce("quick", tmp_path / "x", runs=["nope"], log=lambda m: 0)
    with pytest.raises(ValueError, match="--tolerance"):
        rp.reproduce("quick", tmp_path / "x", tolerance=-1.0, log=lambda m: 0)


# ----------------------------------------------------------------------------- the command
def test_cli_reproduce_passes_its_options_and_exits_by_the_verdict(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake(profile, into, **options):
        seen.update(options, profile=profile, into=into)
        again = record(accuracy=0.9, f1=0.75)
        rows = [rp.compare_run(record(), again, options["tolerance"], changes=no_code_change)]
        return rp.summarise(profile, None, options["tolerance"], rows, options["runs"])

    monkeypatch.setattr(rp, "reproduce", fake)
    out = tmp_path / "summary.json"
    argv = ["reproduce", "--profile", "quick", "--into", str(tmp_path / "r"), "--runs", "lora,stsb"]
    assert cli([*argv, "--tolerance", "0.5", "--summary", str(out)]) == 0
    assert seen["runs"] == ["lora", "stsb"] and seen["tolerance"] == 0.5
    assert seen["into"] == str(tmp_path / "r") and not seen["any_code"]
    assert json.loads(out.read_text())["passed"] is True
    assert cli([*argv, "--summary", str(out)]) == 1  # the default tolerance: 0.1 is beyond it
    assert seen["tolerance"] == rp.DEFAULT_TOLERANCE
    assert "FAILED" in capsys.readouterr().out
    written = tmp_path / "results" / "reproduce" / "quick.json"
    monkeypatch.chdir(tmp_path)
    cli(argv)  # a partial check writes no summary unless asked
    assert not written.exists()
    cli(argv[:5])
    assert json.loads(written.read_text())["profile"] == "quick"


def test_cli_reproduce_names_a_pinned_profile_problem(monkeypatch, tmp_path, capsys):
    def refuse(profile, into, **options):
        raise rp.PinnedCodeError("profile 'cpu' is pinned (code: 47152b3)")

    monkeypatch.setattr(rp, "reproduce", refuse)
    assert cli(["reproduce", "--profile", "cpu", "--into", str(tmp_path)]) == 2
    assert "pinned (code: 47152b3)" in capsys.readouterr().err


def test_the_chapters_numbers_of_a_summary_and_the_pins_table(tmp_path):
    from tinyattn.study.pins import pins_table

    summary = rp.read_summary(Path(__file__).resolve().parents[1] / "results/reproduce/quick.json")
    numbers = rp.summary_numbers(summary)
    assert numbers["passed"] == ("passed" if summary["passed"] else "failed")
    assert numbers["verdict"].endswith("matched its record") == (
        summary["counts"]["match"] == len(summary["runs"])
    )
    failing = summary | {"counts": {"match": 10, "stale": 2}, "passed": False}
    assert rp.summary_numbers(failing)["verdict"] == (
        f"10 of the {len(summary['runs'])} recorded runs of `quick` matched their records (2 stale)"
    )
    assert list(rp.run_table(summary)["status"]) == [r["status"] for r in summary["runs"]]
    timed = summary | {"rerun": {"runs": 12, "jobs": 2, "executor": "process", "wall_seconds": 246}}
    assert rp.summary_numbers(timed)["wall"] == "4.1 minutes of wall time for 12 runs, 2 at a time"
    assert rp.summary_numbers(summary | {"rerun": None})["wall"] == "not measured"
    (tmp_path / "bad.json").write_text('{"runs": []}')
    with pytest.raises(ValueError, match="bad.json: not a summary"):
        rp.read_summary(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="none.json: cannot be read"):
        rp.read_summary(tmp_path / "none.json")
    pins = pins_table(Path(__file__).resolve().parents[1] / "results/runs").set_index("profile")
    assert pins.loc["ablations", "code"] == "603739b" and pins.loc["tune", "code"] == "frozen"
    assert pins.loc["ablations", "made at the pinned commit"] == pins.loc["ablations", "records"]
