"""The training loop and one run end to end: determinism, frozen backbone, records, a real result."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tinyattn import experiment
from tinyattn.checkpoint import trainable_state
from tinyattn.cli import main as cli
from tinyattn.data import load_glue_task
from tinyattn.experiment import RunParams, eval_data, initial_model, run
from tinyattn.inject import PREFIX
from tinyattn.metrics import majority_baseline
from tinyattn.records import adapter_dir, read_record
from tinyattn.train import TrainConfig


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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_backbone_bit_identical_after_training(tmp_path, data_dir, minilm):
    record, model = run(small_run(tmp_path, data_dir, method_options={"experts": 2}))
    for name, param in model.encoder.named_parameters():
        assert torch.equal(param, minilm.get_parameter(name)), name
    changed = [n for n, p in model.named_parameters() if p.requires_grad]
    assert changed and all(n.startswith((f"{PREFIX}.", "head.")) for n in changed)
    assert record["params_count"]["deployed_adapter_params"] == 6 * (7 * 384 + 3)
    assert record["evaluated_as"].startswith("experts weight-averaged")


@pytest.mark.e2e
def test_record_has_provenance_and_is_written(tmp_path, data_dir):
    params = small_run(tmp_path, data_dir)
    record, _ = run(params)
    path = tmp_path / "runs" / f"{params.run_id}.json"
    saved = read_record(path)
    assert saved["status"] == "done" and saved["run_id"] == params.run_id
    for key in ("python", "torch", "transformers", "peft", "tinyattn"):
        assert saved["provenance"]["versions"][key]
    assert "adapters" in saved["provenance"]["versions"]  # None where the optional extra is absent
    assert saved["provenance"]["machine"]["processor"]
    assert "commit" in saved["provenance"]["git"]
    assert saved["params"]["learning_rate"] == 3e-3
    assert len(saved["evaluations"]) == 2 and saved["best"] in saved["evaluations"]
    for entry in saved["evaluations"]:  # what the model predicted, in brief: one count per example
        counts = entry["predictions"]["counts"]
        assert set(counts) <= {"0", "1"} and sum(counts.values()) == saved["eval_examples"]
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


@pytest.mark.e2e
def test_restore_best_decides_which_weights_a_run_ends_with(tmp_path, data_dir, monkeypatch):
    """The best evaluation is the first (scripted): the run ends with its weights only when asked."""
    import tinyattn.train as train_module

    snapshots: list[dict] = []

    def scripted(model, task, loader, accelerator=None):
        snapshots.append(
            {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        )
        return {"accuracy": 0.9 if len(snapshots) == 1 else 0.5}, {"counts": {}}

    monkeypatch.setattr(train_module, "evaluate_with_predictions", scripted)
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


# ----------------------------------------------------------------------------- parameters and ids
REPO = Path(__file__).resolve().parent.parent


def test_run_params_extend_the_train_config():
    """RunParams is the training loop's settings plus the run's own: one declaration of each."""
    assert issubclass(RunParams, TrainConfig)
    ours = {f.name: f.default for f in fields(RunParams)}
    for f in fields(TrainConfig):
        assert ours[f.name] == f.default, f.name
    params = RunParams(learning_rate=3e-3, max_grad_norm=0.5, select_metric="accuracy")
    config = params.train_config()
    assert type(config) is TrainConfig
    assert (config.learning_rate, config.max_grad_norm, config.select_metric) == (
        3e-3,
        0.5,
        "accuracy",
    )
    with pytest.raises(ValueError, match="scheduler"):
        RunParams(scheduler="exponential")  # the loop's own checks run when the run is defined


def test_the_training_notebook_defines_every_parameter():
    notebook = json.loads((REPO / "notebooks" / "train.ipynb").read_text())
    (cell,) = [c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", [])]
    defined = {
        node.targets[0].id
        for node in ast.parse("".join(cell["source"])).body
        if isinstance(node, ast.Assign)
    }
    assert defined == set(RunParams.names())


@pytest.mark.parametrize(
    "params, run_id",
    [
        ({}, "sst2-tinyattn-s42-167f4fe329"),
        (
            {"task": "rte", "method_options": {"experts": 4}, "two_stage": True, "seed": 3},
            "rte-tinyattn-s3-dbf5ebc348",
        ),
        (
            {"task": "stsb", "method": "lora", "learning_rate": 5e-4, "heldout_fraction": 0.1},
            "stsb-lora-s42-3fb03b0b76",
        ),
    ],
)
def test_run_ids_stay_what_they_were(params, run_id):
    """Ids computed by the code that wrote the first records: what the id hashes must not change."""
    assert RunParams(**params).run_id == run_id
    if params.get("two_stage"):
        assert RunParams(**params).stage_one().run_id == "rte-tinyattn-s3-66dfd03d48"
    # the fields added since are left out of the id at their defaults
    assert RunParams(**params, max_grad_norm=1.0, select_metric=None).run_id == run_id
    assert RunParams(**params, max_grad_norm=0.5).run_id != run_id


def test_every_committed_record_reproduces_its_run_id():
    records = [
        json.loads(p.read_text()) for p in sorted((REPO / "results" / "runs").glob("*.json"))
    ]
    if not records:
        pytest.skip("no committed run records")
    for record in records:  # their tinyattn options still name init_from and init_noise_std
        assert RunParams.from_dict(record["params"]).run_id == record["run_id"], record["run_id"]


# ----------------------------------------------------------------------------- the run's start and data
@pytest.mark.e2e
def test_initial_model_is_what_training_starts_from(tmp_path, data_dir, monkeypatch):
    """A two-stage run trains from its twin's saved adapter (copies plus noise), and
    ``initial_model`` rebuilds that starting model exactly; ``eval_data`` the evaluation data."""
    started = {}

    def capture(model, task, train_data, eval_data, *args, **kwargs):
        state = {k: v.clone() for k, v in trainable_state(model).items()}
        started.update(state=state, eval=eval_data, task=task)
        return real_train(model, task, train_data, eval_data, *args, **kwargs)

    real_train = experiment.train
    monkeypatch.setattr(experiment, "train", capture)
    params = small_run(tmp_path, data_dir, method_options={"experts": 4}, two_stage=True)
    record, _ = run(params)
    assert started["task"] is params.spec  # the task travels resolved
    twin = params.stage_one()
    assert record["stage_one"]["run_id"] == twin.run_id
    rebuilt = trainable_state(initial_model(params))
    assert rebuilt.keys() == started["state"].keys()
    assert all(torch.equal(rebuilt[k], started["state"][k]) for k in rebuilt)
    single = load_file(str(adapter_dir(twin.run_id, params.out_dir) / "adapter.safetensors"))
    name = f"{PREFIX}.layers.0.qkv_weight"
    assert 0 < (rebuilt[name] - single[name]).abs().max() < 1e-5  # copies + noise
    assert torch.equal(rebuilt["head.weight"], single["head.weight"])

    dataset, tokenizer = eval_data(params)
    assert dataset.features == started["eval"].features
    assert len(eval_data(params, max_eval_samples=10)[0]) == 10
    held = small_run(tmp_path, data_dir, heldout_fraction=0.25)
    rows = eval_data(held, max_eval_samples=1000)[0]
    assert len(rows) == 16  # a quarter of the 64 capped training examples


def test_initial_model_names_the_missing_twin_adapter(tmp_path):
    params = RunParams(method_options={"experts": 4}, two_stage=True, out_dir=str(tmp_path))
    folder = adapter_dir(params.stage_one().run_id, tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder))):
        initial_model(params)


def test_an_output_folder_that_cannot_be_made_fails_before_training(
    tmp_path, data_dir, monkeypatch
):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(experiment, "train", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ValueError, match="cannot write run records to the folder"):
        run(small_run(tmp_path, data_dir, out_dir=str(blocker / "runs")))


def test_cli_train_to_a_bad_folder_is_one_line_error(tmp_path, data_dir, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(experiment, "train", lambda *a, **k: pytest.fail("training started"))
    argv = ["train", "--task", "sst2", "--data-dir", str(data_dir), "--out", str(blocker / "x")]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(blocker / "x") in err and "Traceback" not in err


@pytest.mark.e2e
def test_experts_record_their_end_of_training_score_before_averaging(tmp_path, data_dir):
    """A run with experts scores its last step's weights twice: weight-averaged (``final``, the
    deployed model) and as trained, every expert active (``final_unaveraged``), what C2's cost of
    averaging compares. Both are the scores of the returned model, the first under averaging."""
    from tinyattn.batching import make_dataloader
    from tinyattn.inject import experts_averaged
    from tinyattn.train import predict

    options = {"experts": 4, "combine": "sequential"}
    params = small_run(
        tmp_path,
        data_dir,
        method_options=options,
        two_stage=True,
        restore_best=False,
        learning_rate=0.05,
        max_steps=6,
        evals_per_epoch=1,
    )
    record, model = run(params)
    assert record["final_unaveraged"]["step"] == record["final"]["step"] == 6
    dataset, tokenizer = eval_data(params)
    loader = make_dataloader(dataset, tokenizer, 64, shuffle=False)
    trained, _ = predict(model, loader)
    with experts_averaged(model):
        averaged, _ = predict(model, loader)
    assert (
        abs(trained - averaged).max() > 1e-4
    )  # the two forms differ, so the test can tell them apart
    from tinyattn.train import evaluate

    assert evaluate(model, params.spec, loader) == record["final_unaveraged"]["metrics"]
    with experts_averaged(model):
        assert evaluate(model, params.spec, loader) == record["final"]["metrics"]
    single = run(small_run(tmp_path, data_dir, restore_best=False, max_steps=2))[0]
    assert "final_unaveraged" not in single  # one expert: nothing to average
