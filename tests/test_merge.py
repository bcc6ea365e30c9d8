"""`tinyattn merge`: run-record folders (and zips of them) from several machines merged into one:
new records copied with their adapters, duplicates recognised, conflicts and bad records reported and
never copied, nothing in the destination overwritten, a dry run writing nothing, counts per profile."""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import yaml
from conftest import TOY, fake_record

from tinyattn.cli import main as cli
from tinyattn.experiment import RunParams, run
from tinyattn.records import adapter_dir, record_path, write_bytes_atomic, write_json_atomic
from tinyattn.study.merge import agree, format_summary, merge
from tinyattn.study.profiles import expand, load_profile
from tinyattn.study.tuning import planned_runs

RUNS = Path(__file__).resolve().parent.parent / "results" / "runs"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PIN = "abcdef1"
PROFILE = {k: v for k, v in TOY.items() if k != "name"}  # each file names its own


@pytest.fixture
def profiles(tmp_path) -> list[Path]:
    """Two small profiles: ``toy`` (seed 1) and ``pinned`` (seed 2, ``code: abcdef1``)."""
    toy, pinned = tmp_path / "toy.yaml", tmp_path / "pinned.yaml"
    toy.write_text(yaml.safe_dump(PROFILE))
    pinned.write_text(yaml.safe_dump(PROFILE | {"seeds": [2], "code": PIN}))
    return [toy, pinned]


def runs_of(profile: Path) -> list[RunParams]:
    return expand(load_profile(profile))


def record(params: RunParams, score: float = 0.8, commit: str = COMMIT, **changes) -> dict:
    """A finished record of a run as the study writes it: parameters, training settings, metrics
    and provenance."""
    made = fake_record(params, [score - 0.1, score], **changes)
    made["config"] = asdict(params.train_config())
    git = {"commit": commit, "dirty": False, "changed_files": []}
    made["provenance"] = {"git": git, "versions": {"torch": "2.13.0"}, "machine": {}}
    return made


def put(folder: Path, made: dict, name: str | None = None, adapter: bool = False) -> Path:
    """Write a record into a runs folder (as ``name``.json when given), with an adapter folder."""
    path = write_json_atomic(folder / f"{name or made['run_id']}.json", made)
    if adapter:
        adapter_dir(made["run_id"], folder).mkdir(parents=True)
        (adapter_dir(made["run_id"], folder) / "adapter_config.json").write_text('{"w": 1}')
    return path


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under a folder and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def kinds(report) -> dict[str, int]:
    return report.counts().get("all", {})


def test_new_records_are_copied_as_they_are_with_their_adapters(tmp_path, profiles):
    head, tiny = runs_of(profiles[0])
    src, dest = tmp_path / "shard", tmp_path / "runs"
    put(src, record(head), adapter=True)
    put(src, record(tiny))
    report = merge([src], dest, profiles=profiles)
    assert report.ok and kinds(report) == {"new": 2, "duplicate": 0, "conflicting": 0, "refused": 0}
    for params in (head, tiny):  # byte for byte: a record is never rewritten
        assert (
            record_path(params.run_id, dest).read_bytes()
            == (src / f"{params.run_id}.json").read_bytes()
        )
    assert (adapter_dir(head.run_id, dest) / "adapter_config.json").read_text() == '{"w": 1}'
    assert not adapter_dir(tiny.run_id, dest).exists()
    assert (report.records_copied, report.adapters_copied) == (2, 1)
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        ["adapters", f"{head.run_id}.json", f"{tiny.run_id}.json"]
    )  # no temporary file left behind


def test_exact_duplicates_are_recognised_and_nothing_is_rewritten(tmp_path, profiles):
    head, tiny = runs_of(profiles[0])
    one, two, dest = tmp_path / "one", tmp_path / "two", tmp_path / "runs"
    for folder in (one, two):  # the same shard downloaded twice
        put(folder, record(head))
    put(two, record(tiny))
    first = merge([one, two], dest, profiles=profiles)
    assert kinds(first) == {"new": 2, "duplicate": 0, "conflicting": 0, "refused": 0}
    before = {p: p.stat().st_mtime_ns for p in dest.glob("*.json")}
    again = merge([one, two], dest, profiles=profiles)
    assert again.ok and kinds(again) == {"new": 0, "duplicate": 2, "conflicting": 0, "refused": 0}
    assert {p: p.stat().st_mtime_ns for p in dest.glob("*.json")} == before
    # a rerun that repeats its record to rounding is a duplicate too
    close = tmp_path / "close"
    put(close, record(head, score=0.8 + 5e-5))
    assert kinds(merge([close], dest, profiles=profiles))["duplicate"] == 1


def test_agreement_is_every_best_and_final_metric_within_the_tolerance(profiles):
    head = runs_of(profiles[0])[0]
    a = record(head, 0.8)
    assert agree(a, record(head, 0.8 + 9e-5)) and not agree(a, record(head, 0.8 + 2e-4))
    assert agree(a, record(head, 0.8 + 2e-4), tolerance=1e-3)
    final_only = json.loads(json.dumps(a))
    final_only["final"] = {
        **a["final"],
        "metrics": {"accuracy": 0.5},
    }  # the best agrees, not the final
    assert not agree(a, final_only)
    extra = json.loads(json.dumps(a))
    extra["best"]["metrics"]["f1"] = 0.7  # a metric only one of them reports
    assert not agree(a, extra) and not agree(extra, a)
    nan = record(head, 0.8)
    nan["best"]["metrics"]["accuracy"] = nan["final"]["metrics"]["accuracy"] = math.nan
    assert agree(nan, json.loads(json.dumps(nan))) and not agree(nan, a)


def test_conflicting_records_are_reported_and_neither_is_kept(tmp_path, profiles, capsys):
    head, tiny = runs_of(profiles[0])
    one, two, dest = tmp_path / "one", tmp_path / "two", tmp_path / "runs"
    put(one, record(head, 0.8125))
    put(two, record(head, 0.6875))  # the same run, other numbers
    put(two, record(tiny))
    assert cli(["merge", str(one), str(two), "--into", str(dest)]) == 1
    out, err = capsys.readouterr()
    assert not record_path(head.run_id, dest).exists() and record_path(tiny.run_id, dest).exists()
    (line,) = [e for e in err.splitlines() if head.run_id in e]
    assert line.startswith("tinyattn merge: conflicting") and str(one) in line and str(two) in line
    assert "0.8125" not in out + err and "0.6875" not in out + err  # counts, never metric values
    # against the destination's record: it stays as it is, and is reported
    kept = record_path(tiny.run_id, dest).read_bytes()
    other = tmp_path / "other"
    put(other, record(tiny, 0.5))
    report = merge([other], dest, profiles=profiles)
    assert kinds(report)["conflicting"] == 1 and not report.ok
    assert record_path(tiny.run_id, dest).read_bytes() == kept
    assert str(record_path(tiny.run_id, dest)) in report.problems()[0]


def test_bad_records_are_refused_one_line_each_and_the_good_ones_merge(tmp_path, profiles, capsys):
    head, tiny = runs_of(profiles[0])
    src, dest = tmp_path / "src", tmp_path / "runs"
    put(src, record(tiny))  # the good one
    put(src, record(head), name=tiny.run_id.replace("tinyattn", "bitfit"))  # renamed
    edited = record(head)
    edited["params"]["learning_rate"] = 3e-3  # parameters changed, id kept
    put(src, edited)
    other = replace(head, seed=7)
    truncated = src / f"{other.run_id}.json"
    truncated.write_text(json.dumps(record(other))[:200])
    (src / "summary.json").write_text('{"tables": [1, 2]}')
    running = record(replace(head, seed=8), status="running")
    put(src, running)
    unproven = record(replace(head, seed=9))
    del unproven["provenance"]
    put(src, unproven)
    misconfigured = record(replace(head, seed=10))
    misconfigured["config"]["learning_rate"] = 1.0
    put(src, misconfigured)
    assert cli(["merge", str(src), "--into", str(dest)]) == 1
    err = capsys.readouterr().err.splitlines()
    expected = {
        tiny.run_id.replace("tinyattn", "bitfit"): "is not its file's name",
        head.run_id: "not the one its parameters give",
        other.run_id: "unreadable: truncated or not JSON",
        "summary": "not a run record",
        running["run_id"]: "not finished (status 'running')",
        unproven["run_id"]: "provenance names no commit",
        misconfigured["run_id"]: "other settings than its parameters say (learning_rate)",
    }
    assert len(err) == len(expected)
    for stem, reason in expected.items():
        (line,) = [e for e in err if f"{src / stem}.json:" in e]
        assert line.startswith("tinyattn merge: refused") and reason in line
    assert [p.name for p in dest.glob("*.json")] == [f"{tiny.run_id}.json"]


def test_a_pinned_profiles_record_must_be_made_with_its_code(tmp_path, profiles):
    head, tiny = runs_of(profiles[1])
    src, dest = tmp_path / "src", tmp_path / "runs"
    put(src, record(head, commit=PIN + "0" * 33))
    put(src, record(tiny, commit="f" * 40))  # not the pin, nor a commit of this checkout
    report = merge([src], dest, profiles=profiles)
    assert kinds(report) == {"new": 1, "duplicate": 0, "conflicting": 0, "refused": 1}
    (line,) = report.problems()
    assert "made at fffffff, not with the code of its pinned profile pinned (code: abcdef1)" in line
    assert record_path(head.run_id, dest).exists() and not record_path(tiny.run_id, dest).exists()
    # --any-code: made with other code on purpose (as `tinyattn study --any-code` makes them)
    other = merge([src], tmp_path / "any", profiles=profiles, any_code=True)
    assert kinds(other) == {"new": 2, "duplicate": 0, "conflicting": 0, "refused": 0}
    # at the pin, but with uncommitted changes to the training code: refused; to other files: merged
    for changed, refused in ((["tinyattn/adapter.py"], 1), (["README.md"], 0)):
        made = record(tiny, commit=PIN + "0" * 33)
        made["provenance"]["git"] |= {"dirty": True, "changed_files": changed}
        folder = tmp_path / changed[0].replace("/", "-")
        put(folder, made)
        assert (
            kinds(merge([folder], tmp_path / "fresh", dry_run=True, profiles=profiles))["refused"]
            == refused
        )
    # the same record is not refused for a profile that is not pinned
    unpinned = tmp_path / "unpinned"
    put(unpinned, record(runs_of(profiles[0])[0], commit="f" * 40))
    assert merge([unpinned], dest, profiles=profiles).ok


def test_records_in_a_zip_are_found_wherever_they_sit(tmp_path, profiles):
    head, tiny = runs_of(profiles[0])
    shard = tmp_path / "shard.zip"
    with zipfile.ZipFile(shard, "w") as archive:
        archive.writestr(f"results/runs/{head.run_id}.json", json.dumps(record(head)))
        archive.writestr(f"results/runs/adapters/{head.run_id}/adapter_config.json", '{"w": 2}')
        archive.writestr(f"runs/{tiny.run_id}.json", json.dumps(record(tiny)))
        archive.writestr("__MACOSX/runs/._x.json", "junk")
        archive.writestr("runs/broken.json", '{"run_id": "broken", "sta')
    dest = tmp_path / "runs"
    missing, not_zip = tmp_path / "nowhere", tmp_path / "notes.zip"
    not_zip.write_text("not a zip")
    report = merge([shard, missing, not_zip], dest, profiles=profiles)
    assert kinds(report) == {"new": 2, "duplicate": 0, "conflicting": 0, "refused": 1}
    assert (adapter_dir(head.run_id, dest) / "adapter_config.json").read_text() == '{"w": 2}'
    assert json.loads(record_path(tiny.run_id, dest).read_text()) == record(tiny)
    problems = report.problems()
    assert f"source {missing}: no such folder or file" in problems
    assert f"source {not_zip}: neither a folder of records nor a .zip of one" in problems
    assert any(p.startswith(f"refused: {shard}:runs/broken.json: unreadable") for p in problems)
    assert not report.ok


def test_nothing_in_the_destination_is_overwritten_or_removed(tmp_path, profiles):
    head, tiny = runs_of(profiles[0])
    dest, src = tmp_path / "runs", tmp_path / "src"
    put(dest, record(head, status="failed"))  # a failed run that a shard has since finished
    (dest / f"{tiny.run_id}.json").write_text('{"run_id": "')  # a truncated record
    adapter_dir(head.run_id, dest).mkdir(parents=True)
    (adapter_dir(head.run_id, dest) / "adapter_config.json").write_text("mine")
    put(src, record(head), adapter=True)
    put(src, record(tiny))
    third = replace(head, seed=5)  # a new run whose adapter folder DIR already holds
    put(src, record(third), adapter=True)
    adapter_dir(third.run_id, dest).mkdir(parents=True)
    (adapter_dir(third.run_id, dest) / "adapter_config.json").write_text("kept")
    before = tree(dest)
    report = merge([src], dest, profiles=profiles)
    after = tree(dest)
    assert {k: v for k, v in after.items() if k in before} == before  # all there, unchanged
    assert set(after) - set(before) == {f"{third.run_id}.json"}
    assert kinds(report) == {"new": 1, "duplicate": 0, "conflicting": 2, "refused": 0}
    text = "\n".join(report.problems())
    assert "is a failed record" in text and "remove it and merge again" in text
    assert "unreadable run record" in text


def test_a_record_is_written_whole_and_never_over_a_file(tmp_path):
    """The last guard, for a file that appears while the merge runs: a hard link, never a rename."""
    target = tmp_path / "x.json"
    write_bytes_atomic(target, b'{"a": 1}', replace=False)
    assert target.read_bytes() == b'{"a": 1}' and target.stat().st_mode & 0o777 == 0o644
    with pytest.raises(FileExistsError):
        write_bytes_atomic(target, b'{"a": 2}', replace=False)
    assert target.read_bytes() == b'{"a": 1}' and [p.name for p in tmp_path.iterdir()] == ["x.json"]
    write_bytes_atomic(target, b'{"a": 3}')  # the default replaces, as a record's rewrite does
    assert target.read_bytes() == b'{"a": 3}' and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_done_record_wins_over_a_failed_one(tmp_path, profiles):
    head, tiny = runs_of(profiles[0])
    one, two, dest = tmp_path / "one", tmp_path / "two", tmp_path / "runs"
    put(one, record(head, status="failed"))
    put(two, record(head))  # a later try that finished
    put(one, record(tiny, status="failed"))  # failed everywhere: copied, so the runner can retry
    report = merge([one, two], dest, profiles=profiles)
    assert report.ok and kinds(report)["new"] == 2
    assert json.loads(record_path(head.run_id, dest).read_text())["status"] == "done"
    assert json.loads(record_path(tiny.run_id, dest).read_text())["status"] == "failed"
    again = merge([one], dest, profiles=profiles)  # failed records of runs DIR already holds
    assert again.ok and kinds(again)["duplicate"] == 2
    assert json.loads(record_path(head.run_id, dest).read_text())["status"] == "done"


def test_a_dry_run_writes_nothing_and_says_what_a_merge_would_do(tmp_path, profiles, capsys):
    head, tiny = runs_of(profiles[0])
    src, dest = tmp_path / "src", tmp_path / "runs"
    put(dest, record(tiny))
    put(src, record(tiny))
    put(src, record(head), adapter=True)
    put(src, record(replace(head, seed=3), 0.5), name="not-its-name")
    before = tree(dest)
    dry = merge([src], dest, dry_run=True, profiles=profiles)
    assert tree(dest) == before
    assert (dry.records_copied, dry.adapters_copied) == (1, 1)
    assert "dry run: nothing written" in format_summary(dry)
    assert "would copy 1 record(s), 1 adapter(s)" in format_summary(dry)
    assert (
        cli(["merge", str(src), "--into", str(tmp_path / "absent"), "--dry-run", "--verbose"]) == 1
    )
    assert not (tmp_path / "absent").exists()
    out = capsys.readouterr().out
    assert (
        f"new: {src / head.run_id}.json -> {tmp_path / 'absent' / head.run_id}.json (with its adapter)"
        in out
    )
    real = merge([src], dest, profiles=profiles)
    assert real.counts() == dry.counts() and tree(dest) != before


def test_the_summary_counts_each_profiles_runs(tmp_path, profiles):
    (head, tiny), (pinned_head, pinned_tiny) = runs_of(profiles[0]), runs_of(profiles[1])
    src, dest = tmp_path / "src", tmp_path / "runs"
    put(dest, record(tiny))
    put(src, record(tiny))  # duplicate, toy
    put(src, record(head))  # new, toy
    put(src, record(pinned_head, commit=PIN + "0" * 33))  # new, pinned
    put(src, record(pinned_tiny))  # refused, pinned (made at another commit)
    put(src, record(replace(head, seed=99)))  # new, no profile
    put(src, record(replace(head, seed=98), 0.3))
    put(dest, record(replace(head, seed=98), 0.9))  # conflicting, no profile
    report = merge([src], dest, profiles=profiles)
    assert report.counts() == {
        "toy": {"new": 1, "duplicate": 1, "conflicting": 0, "refused": 0},
        "pinned": {"new": 1, "duplicate": 0, "conflicting": 0, "refused": 1},
        "no profile": {"new": 1, "duplicate": 0, "conflicting": 1, "refused": 0},
        "all": {"new": 3, "duplicate": 1, "conflicting": 1, "refused": 1},
    }
    rows = {line.split()[0]: line.split()[-4:] for line in format_summary(report).splitlines()[2:6]}
    assert rows == {
        "pinned": ["1", "0", "0", "1"],
        "toy": ["1", "1", "0", "0"],
        "no": ["1", "0", "1", "0"],
        "all": ["3", "1", "1", "1"],
    }


def test_runs_count_under_the_committed_profiles_that_plan_them(tmp_path):
    """With the committed profiles: a `quick` run, a `cpu` run (pinned to 47152b3, its learning rates
    from `tune`'s committed records) made at another commit, and a run of no profile."""
    quick = planned_runs("quick", str(RUNS))[0]
    cpu = planned_runs("cpu", str(RUNS))[0]
    src, dest = tmp_path / "src", tmp_path / "runs"
    put(src, record(quick))
    put(src, record(cpu, commit="f" * 40))
    put(src, record(replace(quick, seed=12345)))
    report = merge([src], dest, dry_run=True)
    counts = report.counts()
    assert counts["quick"]["new"] == 1 and counts["no profile"]["new"] == 1
    assert (
        counts["cpu"]["refused"] == 1
        and "pinned profile cpu (code: 47152b3)" in report.problems()[0]
    )
    pinned_made = tmp_path / "pinned"
    put(pinned_made, record(cpu, commit=load_profile("cpu")["code"] + "0" * 33))
    assert merge([pinned_made], dest, dry_run=True).counts()["cpu"]["new"] == 1


@pytest.mark.e2e
def test_a_real_runs_record_and_adapter_merge(tmp_path, profiles, data_dir, one_thread):
    """A record made by a real (one-step) run passes every check, with its saved adapter."""
    head = runs_of(profiles[0])[0]
    src, dest = tmp_path / "machine", tmp_path / "runs"
    params = replace(
        head, out_dir=str(src), data_dir=str(data_dir), progress=False, save_adapter=True
    )
    run(params)
    assert params.run_id == head.run_id  # where a record is and whether it is saved: not its id
    report = merge([src], dest, profiles=profiles)
    assert report.ok and report.counts()["toy"]["new"] == 1 and report.adapters_copied == 1
    assert tree(adapter_dir(head.run_id, dest)) == tree(adapter_dir(head.run_id, src))
    assert merge([src], dest, profiles=profiles).counts()["toy"]["duplicate"] == 1
