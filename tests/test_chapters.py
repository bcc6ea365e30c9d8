"""The book's study chapters render a finished study: fake records for every planned run, then the
chapter notebooks executed on them (the real records arrive over several sessions)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import papermill
import pytest
import yaml

from tinyattn.records import write_json_atomic
from tinyattn.study import expand, load_profile

BOOK = Path(__file__).resolve().parent.parent / "book"


def fake_record(params, score: float) -> dict:
    metric = "pearson" if params.task == "stsb" else "accuracy"
    curve = [score * f for f in (0.8, 0.95, 1.0)]
    evaluations = [
        {
            "step": 10 * (i + 1),
            "epoch": i + 1.0,
            "train_loss": 1.0 / (i + 1),
            "metrics": {metric: s},
        }
        for i, s in enumerate(curve)
    ]
    record = {
        "run_id": params.run_id,
        "status": "done",
        "task": params.task,
        "method": params.method,
        "seed": params.seed,
        "select_metric": metric,
        "params": {"label": params.label, "backbone": params.backbone, **vars(params)},
        "params_count": {"adapter_params": 1000, "head_params": 770, "backbone_params": 22_565_376},
        "best": evaluations[-1],
        "final": evaluations[-1],
        "evaluations": evaluations,
        "steps": 30,
        "epochs_run": 3.0,
        "train_examples": 100,
        "eval_examples": 50,
        "train_seconds": 60.0,
        "eval_seconds": 5.0,
        "wall_seconds": 70.0,
        "tokens_per_second": 1800.0,
    }
    if params.two_stage:
        record["stage_one"] = {"run_id": params.stage_one().run_id, "source": "saved adapter"}
    return record


def noise(*key) -> float:
    return (zlib.crc32(repr(key).encode()) % 1000) / 1000.0  # deterministic, in [0, 1)


def write_profile(name: str, out: Path, bonus: dict[str, float]) -> int:
    runs = expand(load_profile(name), str(out))
    for p in runs:
        score = 0.6 + 0.05 * noise(p.task, p.seed, p.label, p.learning_rate)
        write_json_atomic(out / f"{p.run_id}.json", fake_record(p, score + bonus.get(p.label, 0)))
    return len(runs)


def fake_report(run_id: str, task: str, two_stage: bool, averaged: float) -> dict:
    """An experts-analysis report with the keys ``notebooks/experts.ipynb`` writes."""
    scores = {"averaged": averaged, "trained_form": 0.85, "logit_ensemble": 0.85}
    scores |= {"single_best": 0.84, "single_random": 0.8}
    variants = [
        {"variant": v, "accuracy": a, "ms_per_example": 1.0 + (v != "averaged")}
        | {"agreement_with_trained": 0.99, "encoder_passes": 1}
        for v, a in scores.items()
    ]
    similarity = [
        {"kind": kind, "layer": layer, "mean": 0.9, "min": 0.8, "max": 1.0}
        for kind in ("weights", "updates", "attention")
        for layer in range(6)
    ]
    stats = [
        {"layer": layer, "expert": e, "entropy": 1.0, "entropy_uniform": 2.0}
        | {"mean_distance": 3.0, "special_share": 0.3, "self_share": 0.1}
        for layer in range(6)
        for e in range(4)
    ]
    report = {"run_id": run_id, "task": task, "two_stage": two_stage, "variants": variants}
    return report | {"similarity_summary": similarity, "attention_stats": stats, "figures": {}}


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    write_profile("tune", out, {})
    write_profile("tune_rte", out, {})
    write_profile("cpu", out, {"tinyattn_e4": 0.2})
    write_profile("ablations", out, {"tinyattn_e1": 0.2, "tinyattn_e1_2x": 0.2, "tinyattn_e4": 0.3})
    analysis = out / "analysis"
    runs = expand(load_profile("ablations"), str(out))
    independent = {(r.task, r.seed): r.run_id for r in runs if r.label == "tinyattn_e4_indep"}
    for r in runs:
        if r.label == "tinyattn_e4":
            report = fake_report(r.run_id, r.task, True, 0.85)
            other = fake_report(independent[(r.task, r.seed)], r.task, False, 0.5)
            write_json_atomic(analysis / f"{r.run_id}.json", report | {"independent": other})
    return out


def execute(chapter: str, runs_dir: Path, tmp_path: Path, **parameters) -> str:
    out = tmp_path / chapter
    papermill.execute_notebook(
        str(BOOK / chapter),
        str(out),
        parameters={"runs_dir": str(runs_dir), **parameters},
        cwd=str(BOOK),
        progress_bar=False,
    )
    cells = json.loads(out.read_text())["cells"]
    for output in [o for c in cells for o in c.get("outputs", [])]:
        for mime, value in output.get("data", {}).items():
            if mime.startswith("application/papermill.record/text/plain"):
                # myst-nb cannot format a NumPy scalar's repr ("np.float64(...)"): glue plain numbers
                assert not str(value).startswith("np."), f"{chapter} glues {value}"
    return json.dumps([c.get("outputs", []) for c in cells])  # what the reader sees, not the code


def test_glue_chapter_gives_a_verdict_on_a_finished_study(finished_study, tmp_path):
    text = execute("glue.ipynb", finished_study, tmp_path)
    assert "165 of 165 runs of the `cpu` profile are done" in text
    assert "C1 holds on MiniLM-L6" in text  # tinyattn_e4 is 20 points ahead on every pair
    assert "Provisional" not in text and "No verdict yet" not in text


def test_context_chapter_gives_a_verdict_on_finished_ablations(finished_study, tmp_path):
    text = execute("context.ipynb", finished_study, tmp_path)
    assert "84 of 84 runs of the `ablations` profile are done" in text
    # the no-context and bottleneck variants are 20 points behind tinyattn_e1 on every pair
    assert "C3 holds on MiniLM-L6" in text


def test_heads_chapter_gives_a_verdict_on_finished_ablations_and_reports(finished_study, tmp_path):
    text = execute(
        "heads.ipynb", finished_study, tmp_path, analysis_dir=str(finished_study / "analysis")
    )
    assert "36 of the 36 expert runs" in text and "6 analysis report(s)" in text
    # averaged = trained form and E = 4 is 10 points ahead of E = 1 on every pair
    assert (
        "C2 holds on MiniLM-L6" in text
        and "independently initialised experts, as trained minus averaged: +35.00 points" in text
    )


def test_tuning_selection_waits_for_every_task_of_a_method(tmp_path):
    from tinyattn.tuning import TuningIncompleteError, select_learning_rates, selection_table

    # a two-task grid: the first tuning grid as planned (RTE and SST-2, three rates per method)
    profile = load_profile("tune_rte")
    profile["tasks"] |= load_profile("tune")["tasks"]
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(profile))
    for p in expand(load_profile(str(grid)), str(tmp_path)):
        if p.task == "sst2" or p.label == "lora":  # RTE missing for all but LoRA
            score = 0.8 + 0.01 * noise(p.task, p.label, p.learning_rate)
            write_json_atomic(tmp_path / f"{p.run_id}.json", fake_record(p, score))
    table = selection_table(str(grid), str(tmp_path)).set_index("method")
    assert table.loc["lora", "mean"].notna().all() and table.loc["lora", "chosen"].sum() == 1
    assert table.loc["houlsby", "mean"].isna().all() and not table.loc["houlsby", "chosen"].any()
    lora = table.loc["lora"].set_index("learning_rate")
    chosen = lora.index[lora["chosen"]].item()
    assert lora.loc[chosen, "at_grid_edge"] == (chosen in (lora.index.min(), lora.index.max()))
    assert not lora.loc[~lora["chosen"], "at_grid_edge"].any()
    with pytest.raises(TuningIncompleteError, match="27 of 60 runs not done"):
        select_learning_rates(str(grid), str(tmp_path))
