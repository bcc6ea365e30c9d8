"""The training loop and one run end to end: determinism, frozen backbone, records, a real result."""

from __future__ import annotations

import json

import pytest
import torch

from tinyattn.data import load_glue_task
from tinyattn.experiment import RunParams, run
from tinyattn.metrics import majority_baseline
from tinyattn.records import read_record


def small_run(tmp_path, data_dir, **overrides) -> RunParams:
    params = dict(
        task="sst2",
        method="tinyattn",
        seed=3,
        max_train_samples=64,
        max_eval_samples=64,
        max_steps=4,
        batch_size=16,
        evals_per_epoch=2,
        learning_rate=3e-3,
        data_dir=str(data_dir),
        out_dir=str(tmp_path / "runs"),
        progress=False,
    )
    params.update(overrides)
    return RunParams(**params)


def test_same_seed_same_metrics(tmp_path, data_dir):
    first, _ = run(small_run(tmp_path / "a", data_dir))
    second, _ = run(small_run(tmp_path / "b", data_dir))
    assert first["run_id"] == second["run_id"]
    assert first["evaluations"] == second["evaluations"]
    other, _ = run(small_run(tmp_path / "c", data_dir, seed=4))
    assert other["run_id"] != first["run_id"]
    assert [e["train_loss"] for e in other["evaluations"]] != [
        e["train_loss"] for e in first["evaluations"]
    ]


def test_backbone_bit_identical_after_training(tmp_path, data_dir, minilm):
    record, model = run(small_run(tmp_path, data_dir, method_options={"experts": 2}))
    for name, param in model.encoder.named_parameters():
        assert torch.equal(param, minilm.get_parameter(name)), name
    changed = [n for n, p in model.named_parameters() if p.requires_grad]
    assert changed and all(n.startswith(("tiny_attention.", "head.")) for n in changed)
    assert record["params_count"]["deployed_adapter_params"] == 6 * (7 * 384 + 3)
    assert record["evaluated_as"].startswith("experts weight-averaged")


def test_record_has_provenance_and_is_written(tmp_path, data_dir):
    params = small_run(tmp_path, data_dir)
    record, _ = run(params)
    path = tmp_path / "runs" / f"{params.run_id}.json"
    saved = read_record(path)
    assert saved["status"] == "done" and saved["run_id"] == params.run_id
    for key in ("python", "torch", "transformers", "peft", "adapters", "tinyattn"):
        assert saved["provenance"]["versions"][key]
    assert saved["provenance"]["machine"]["processor"]
    assert "commit" in saved["provenance"]["git"]
    assert saved["params"]["learning_rate"] == 3e-3
    assert len(saved["evaluations"]) == 2 and saved["best"] in saved["evaluations"]
    assert saved["tokens_per_second"] > 0 and saved["train_seconds"] > 0
    assert not list((tmp_path / "runs").glob(".*.tmp"))  # atomic write leaves nothing behind


def test_failed_run_is_recorded(tmp_path, data_dir):
    params = small_run(tmp_path, data_dir, backbone=str(tmp_path / "no-such-backbone"))
    with pytest.raises(FileNotFoundError, match="no-such-backbone"):
        run(params)
    saved = json.loads((tmp_path / "runs" / f"{params.run_id}.json").read_text())
    assert saved["status"] == "failed" and "no-such-backbone" in saved["error"]


def test_bad_run_parameters_are_named():
    with pytest.raises(ValueError, match="unknown GLUE task 'sst3'"):
        RunParams(task="sst3")
    with pytest.raises(ValueError, match="unknown method 'lorax'"):
        RunParams(method="lorax")
    with pytest.raises(ValueError, match="takes no option"):
        RunParams(method_options={"heads": 4})
    with pytest.raises(ValueError, match="unknown run parameter"):
        RunParams.from_dict({"learning_rte": 1e-3})


@pytest.mark.slow
def test_end_to_end_sst2_beats_majority(tmp_path, data_dir):
    """The packaged backbone + tiny attention on 2,000 SST-2 examples clearly beats the majority class."""
    params = small_run(
        tmp_path,
        data_dir,
        max_train_samples=2000,
        max_eval_samples=None,
        max_steps=None,
        epochs=1,
        batch_size=32,
        learning_rate=2e-3,
        max_length=64,
    )
    record, _ = run(params)
    dev = load_glue_task("sst2", "validation", data_dir)
    train = load_glue_task("sst2", "train", data_dir)
    majority = majority_baseline("sst2", [r["label"] for r in train], [r["label"] for r in dev])
    assert record["eval_examples"] == 872
    assert record["best"]["metrics"]["accuracy"] > majority["accuracy"] + 0.10, record["best"]


def test_a_commit_named_in_the_environment_wins_over_git(monkeypatch):
    from tinyattn.records import git_commit

    here = git_commit()
    assert here["commit"] and "source" not in here  # this checkout's own git metadata
    monkeypatch.setenv("TINYATTN_GIT_COMMIT", "0123abc (adapter.py of 4567def)")
    named = git_commit()
    assert named == {
        "commit": "0123abc (adapter.py of 4567def)",
        "dirty": None,
        "source": "TINYATTN_GIT_COMMIT",
    }


def test_restore_best_decides_which_weights_a_run_ends_with(tmp_path, data_dir, monkeypatch):
    """The best evaluation is the first (scripted): the run ends with its weights only when asked."""
    import tinyattn.train as train_module

    snapshots: list[dict] = []

    def scripted(model, task, loader, accelerator=None):
        snapshots.append(
            {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        )
        return {"accuracy": 0.9 if len(snapshots) == 1 else 0.5}

    monkeypatch.setattr(train_module, "evaluate", scripted)
    ends = {}
    for restore in (True, False):
        snapshots.clear()
        params = small_run(tmp_path / str(restore), data_dir, restore_best=restore)
        record, model = run(params)
        assert len(snapshots) == 2 and record["best"]["step"] < record["final"]["step"]
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        kept = snapshots[0] if restore else snapshots[1]
        assert all(torch.equal(trained[n], kept[n]) for n in kept)
        assert not all(torch.equal(snapshots[0][n], snapshots[1][n]) for n in kept)
        ends[restore] = record
    assert ends[True]["kept_weights"] == "best evaluation"
    assert ends[False]["kept_weights"] == "last step"
    # the default is left out of the run id, so the ids of earlier records stand
    assert "restore_best" not in small_run(tmp_path, data_dir).identity()
    assert ends[True]["run_id"] == small_run(tmp_path, data_dir).run_id != ends[False]["run_id"]
