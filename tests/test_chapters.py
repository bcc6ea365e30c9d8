"""The book's chapters: the study chapters render a finished study (fake records for every planned
run, then the chapter notebooks executed on them; the real records arrive over several sessions), and
the tables and sentences they show (``tinyattn.analysis.report``) come out as computed by hand."""

from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import papermill
import pytest
import yaml
from conftest import fake_record, tiny_encoder

from tinyattn.adapter import param_count
from tinyattn.analysis import report
from tinyattn.records import write_json_atomic
from tinyattn.study.profiles import estimate_seconds, expand, load_profile
from tinyattn.study.status import ProfileRuns
from tinyattn.study.tuning import planned_runs

BOOK = Path(__file__).resolve().parent.parent / "book"


def chapter_record(params, score: float) -> dict:
    """A finished three-epoch run that climbs to ``score``."""
    return fake_record(params, [score * f for f in (0.8, 0.95, 1.0)])


def noise(*key) -> float:
    return (zlib.crc32(repr(key).encode()) % 1000) / 1000.0  # deterministic, in [0, 1)


def write_profile(name: str, out: Path, bonus: dict[str, float]) -> int:
    runs = planned_runs(name, str(out))
    for p in runs:
        score = 0.6 + 0.05 * noise(p.task, p.seed, p.label, p.learning_rate)
        write_json_atomic(
            out / f"{p.run_id}.json", chapter_record(p, score + bonus.get(p.label, 0))
        )
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


def write_confirm(out: Path) -> None:
    """The confirmatory round, finished: tiny attention 2 points ahead of its no-context and
    bottleneck twins, the sequential experts 3 ahead of one expert and 5 of one trained as long,
    and their weight average within 0.1 points of the experts as trained."""
    bonus = {"tinyattn_e1": 0.02, "tinyattn_e4_seq": 0.05}
    for p in planned_runs("confirm", str(out)):
        score = 0.6 + 0.05 * noise(p.task, p.seed, p.label) + bonus.get(p.label, 0)
        record = chapter_record(p, score)
        if p.label == "tinyattn_e4_seq":
            ((metric, value),) = record["final"]["metrics"].items()
            unaveraged = {metric: value + 0.001 * noise(p.task, p.seed)}
            record["final_unaveraged"] = record["final"] | {"metrics": unaveraged}
        write_json_atomic(out / f"{p.run_id}.json", record)


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    write_profile("tune", out, {})
    write_profile("tune_rte", out, {})
    write_profile("cpu", out, {"tinyattn_e4": 0.2})
    write_profile("ablations", out, {"tinyattn_e1": 0.2, "tinyattn_e1_2x": 0.2, "tinyattn_e4": 0.3})
    write_confirm(out)
    analysis = out / "analysis"
    runs = planned_runs("ablations", str(out))
    independent = {(r.task, r.seed): r.run_id for r in runs if r.label == "tinyattn_e4_indep"}
    for r in runs:
        if r.label == "tinyattn_e4":
            report = fake_report(r.run_id, r.task, True, 0.85)
            other = fake_report(independent[(r.task, r.seed)], r.task, False, 0.5)
            write_json_atomic(analysis / f"{r.run_id}.json", report | {"independent": other})
    return out


def execute(chapter: str, runs_dir: Path | None, tmp_path: Path, **parameters) -> str:
    """The chapter executed (on ``runs_dir`` where given): what its outputs show, as JSON text."""
    out = tmp_path / chapter
    if runs_dir is not None:
        parameters["runs_dir"] = str(runs_dir)
    papermill.execute_notebook(
        str(BOOK / chapter), str(out), parameters=parameters, cwd=str(BOOK), progress_bar=False
    )
    cells = json.loads(out.read_text())["cells"]
    for output in [o for c in cells for o in c.get("outputs", [])]:
        for mime, value in output.get("data", {}).items():
            if mime.startswith("application/papermill.record/text/plain"):
                # myst-nb cannot format a NumPy scalar's repr ("np.float64(...)"): glue plain numbers
                assert not str(value).startswith("np."), f"{chapter} glues {value}"
    return json.dumps([c.get("outputs", []) for c in cells])  # what the reader sees, not the code


def test_glue_chapter_gives_a_verdict_on_a_finished_study(finished_study, tmp_path):
    summary = tmp_path / "summary"
    text = execute("glue.ipynb", finished_study, tmp_path, summary_dir=str(summary))
    assert "165 of 165 runs of the `cpu` profile are done" in text
    # tinyattn_e4 is 20 points ahead on every pair (tinyattn_e1 is C2's, not in C1's family)
    assert "C1 holds on MiniLM-L6" in text
    assert "C1 holds on MiniLM-L6: no method is resolvably ahead" in text  # the opening sentence
    assert "Provisional" not in text and "No verdict yet" not in text
    assert "No run of the longer budget has finished yet." in text  # no `budget` record here
    results = pd.read_csv(summary / "cpu_results.csv")
    assert len(results) == 5 * 11 and (results["seeds"] == 3).all()


def test_context_chapter_reports_the_pilots_estimates_and_no_verdict(finished_study, tmp_path):
    text = execute("context.ipynb", finished_study, tmp_path)
    assert "90 of 90 runs of the `ablations` profile are done" in text
    # the no-context and bottleneck variants are 20 points behind tinyattn_e1 on every pair, but six
    # pairs cannot resolve a sign test after Holm's correction over C3's three comparisons: the
    # pilot gives its estimates and no verdict, not even "not established"
    assert "No verdict on C3 from the exploratory pilot" in text
    assert re.search(
        r"without context \(`tinyattn_self`\) \+(19|20)\.\d\d points \(95 % interval", text
    )
    assert "6 of 6 pairs won" in text
    for verdict in ("C3 holds", "C3 does not hold", "C3 is not established"):
        assert verdict not in text
    # the finished confirmatory round opens the chapter with its verdict, and the pilot's sentences
    # point to it rather than call it pending
    assert "which decided C3 on new seeds: its verdict opens this chapter" in text
    assert "pending" not in text
    assert "In the confirmatory round, C3 **holds**: `context` ahead (+" in text
    # what the intro shows: the round's reading and each comparison's outcome
    assert (
        "holds in the confirmatory round, on 65 pairs: context ahead, attention_vs_bottleneck ahead"
        in text
    )
    # the round's family as a table: each comparison, its sides, interval, Holm p and other tests
    for sides in ("tinyattn_e1 − bottleneck_matched", "tinyattn_e1 − tinyattn_self"):
        assert json.dumps(sides)[1:-1] in text  # the outputs' JSON escapes the minus sign
    assert "Read once the round" not in text


def test_heads_chapter_gives_a_verdict_on_finished_ablations_and_reports(finished_study, tmp_path):
    text = execute(
        "heads.ipynb", finished_study, tmp_path, analysis_dir=str(finished_study / "analysis")
    )
    assert "42 of the 42 expert runs" in text and "6 analysis report(s)" in text
    # averaged = trained form, and E = 4 is 10 points ahead of E = 1 on every pair: the intervals
    # say the experts help, but six pairs cannot resolve a sign test after Holm's correction
    assert "C2 holds only in part on MiniLM-L6" in text
    assert "independently initialised experts, as trained minus averaged: +35.00 points" in text
    assert "the point-estimate rule says **C2 holds on MiniLM-L6**" in text
    assert "The sequential form has no analysed run yet" in text  # no report of it here
    # the finished confirmatory round: its verdict opens the chapter and fills C2's parts
    assert re.search(
        r"In the confirmatory round, C2 \*\*holds\*\*: `averaging` \w+ within the margin \(-0\.0\d "
        r"points, 95 % interval -0\.\d\d to [-+]0\.\d\d, over 65 pairs\); `experts` ahead "
        r"\(\+3\.\d\d points, 95 % interval \+\d\.\d\d to \+\d\.\d\d, over 65 pairs\); "
        r"`experts_vs_compute` ahead \(\+[45]\.\d\d points, 95 % interval",
        text,
    )
    assert "holds in the confirmatory round, on 65 pairs: averaging " in text
    assert "In the exploratory grids, C2 holds only in part on MiniLM-L6: averaging" in text
    assert "all 325 of its runs are done" in text
    assert "read once the grid is done" not in text  # no part of the sequential form still waits


@pytest.mark.slow
@pytest.mark.parametrize(
    "chapter, glued",
    [
        ("efficiency.ipynb", ["bench_latency_verdict", "bench_before_after", "gpu_small_overlap"]),
        ("parameters.ipynb", ["tinyattn_e1_params", "param_table"]),
        ("profiles.ipynb", ["cpu_profile_runs", "lr_table", "data_table"]),
    ],
)
def test_reference_chapters_glue_their_numbers(chapter, glued, tmp_path):
    """The chapters on the committed benchmark files, the packaged backbone and the profiles."""
    text = execute(chapter, None, tmp_path)
    for name in glued:
        assert f'"name": "{name}"' in text, f"{chapter} does not glue {name}"


def test_tuning_selection_waits_for_every_task_of_a_method(tmp_path):
    from tinyattn.study.tuning import TuningIncompleteError, select_learning_rates, selection_table

    # a two-task grid: the first tuning grid as planned (RTE and SST-2, three rates per method)
    profile = load_profile("tune_rte")
    profile["tasks"] |= load_profile("tune")["tasks"]
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(profile))
    for p in planned_runs(str(grid), str(tmp_path)):
        if p.task == "sst2" or p.label == "lora":  # RTE missing for all but LoRA
            score = 0.8 + 0.01 * noise(p.task, p.label, p.learning_rate)
            write_json_atomic(tmp_path / f"{p.run_id}.json", chapter_record(p, score))
    table = selection_table(str(grid), str(tmp_path)).set_index("method")
    assert table.loc["lora", "mean"].notna().all() and table.loc["lora", "chosen"].sum() == 1
    assert table.loc["houlsby", "mean"].isna().all() and not table.loc["houlsby", "chosen"].any()
    lora = table.loc["lora"].set_index("learning_rate")
    chosen = lora.index[lora["chosen"]].item()
    assert lora.loc[chosen, "at_grid_edge"] == (chosen in (lora.index.min(), lora.index.max()))
    assert not lora.loc[~lora["chosen"], "at_grid_edge"].any()
    with pytest.raises(TuningIncompleteError, match="27 of 60 runs not done"):
        select_learning_rates(str(grid), str(tmp_path))


# --------------------------------------------------------------------------- tinyattn.analysis.report

QUICK = expand(load_profile("quick"))  # 2 tasks x 6 methods x 1 seed, no tuning


def study_of(
    runs: pd.DataFrame, planned: list, waiting: str | None = None, roles: dict | None = None
) -> ProfileRuns:
    """What ``profile_runs`` answers for the ``quick`` profile with these finished runs."""
    return ProfileRuns.of({"name": "quick", "roles": roles or {}}, planned, waiting, runs)


def test_progress_counts_the_plan_and_says_why_the_rest_waits():
    done = pd.DataFrame({"run_id": [p.run_id for p in QUICK[:5]]})
    assert report.progress(study_of(done, QUICK)) == "5 of 12 runs of the `quick` profile are done."
    waiting = study_of(pd.DataFrame(), QUICK, waiting="tuning profile 'tune' has 3 runs not done")
    assert report.progress(waiting) == (
        "0 of 12 runs of the `quick` profile are done "
        "(the rest wait: tuning profile 'tune' has 3 runs not done)."
    )


def test_budget_counts_cpu_hours_by_thread_and_projects_the_rest():
    cpu_a, cpu_b, cpu_c, gpu = QUICK[0], QUICK[1], QUICK[2], QUICK[6]
    runs = pd.DataFrame(
        {
            "run_id": [cpu_a.run_id, cpu_b.run_id, cpu_c.run_id, gpu.run_id],
            "task": [cpu_a.task, cpu_b.task, cpu_c.task, gpu.task],
            "device": ["cpu", "cpu", "cpu", "NVIDIA H100"],
            "wall_seconds": [3600.0, 1800.0, 720.0, 90.0],
            "torch_threads": [1, 2, None, 12],  # no thread count recorded: one thread
        }
    )
    numbers = report.budget_numbers(study_of(runs, QUICK))
    measured = (3600 + 2 * 1800 + 720) / 3600  # 2.2 CPU-hours
    pending = sum(estimate_seconds(p) for p in QUICK[3:6] + QUICK[7:]) / 3600
    assert numbers["budget_measured"] == pytest.approx(measured)
    assert numbers["budget_pending"] == 8
    assert numbers["budget_projected"] == pytest.approx(measured + pending)
    assert numbers["budget_sentence"] == (
        "the 3 runs finished on this CPU took 2.2 CPU-hours; with the recalibrated estimate for the "
        f"8 still to run, the whole profile takes about {measured + pending:.0f} CPU-hours."
    )
    assert (numbers["budget_gpu_runs"], numbers["budget_gpu_tasks"]) == (1, "stsb")
    assert numbers["budget_gpu_minutes"] == 1.5
    assert numbers["budget_gpu_cpu_estimate"] == pytest.approx(estimate_seconds(gpu) / 3600)
    finished = report.budget_numbers(study_of(runs.iloc[:3], QUICK[:3]))
    assert finished["budget_sentence"] == (
        "all 3 runs on this CPU are finished, and took 2.2 CPU-hours."
    )
    assert finished["budget_gpu_tasks"] == "no task" and finished["budget_gpu_runs"] == 0
    everything = report.budget_numbers(study_of(runs, [cpu_a, cpu_b, cpu_c, gpu]))
    gpu_hours = estimate_seconds(gpu) / 3600
    assert everything["budget_sentence"] == (
        "the 3 runs on this CPU are finished, and took 2.2 CPU-hours; with the runner's estimate "
        f"for the 1 that ran on a GPU instead ({gpu_hours:.1f} CPU-hours), all 4 runs of the "
        f"profile come to about {measured + gpu_hours:.0f} CPU-hours."
    )


def test_pilot_numbers_give_the_score_range_and_the_slice_error():
    runs = pd.DataFrame(
        {
            "method": ["lora", "lora", "houlsby"],
            "learning_rate": [1e-4, 3e-4, 1e-4],
            "final_score": [52.21, 58.23, 55.0],
            "eval_examples": [249, 249, 250],
        }
    )
    numbers = report.pilot_numbers(study_of(runs, QUICK))
    assert numbers == {
        "pilot_done": 3,
        "pilot_planned": 12,
        "pilot_min": 52.21,
        "pilot_max": 58.23,
        "pilot_slice": 249,
        "pilot_se": pytest.approx(100 * math.sqrt(0.25 / 249)),  # 3.17 points
    }
    table = report.rate_table(runs)
    assert list(table.columns) == ["1e-04", "3e-04"]
    assert table.loc["lora", "3e-04"] == 58.2 and math.isnan(table.loc["houlsby", "3e-04"])
    nothing = report.pilot_numbers(study_of(pd.DataFrame(), QUICK))
    assert nothing["pilot_slice"] == 0 and math.isnan(nothing["pilot_se"])


def test_mean_late_gain_of_the_reference_and_the_median_of_the_others():
    gains = pd.DataFrame(
        {
            "method": ["ref", "ref", "a", "b", "b", "c"],
            "task": ["t1", "t2", "t1", "t1", "t2", "t1"],
            "gain": [1.0, 3.0, 0.5, 1.5, 2.5, 4.0],
        }
    )
    assert report.mean_late_gain(gains, "ref") == (2.0, 2.0)  # others: 0.5, 2.0, 4.0
    assert all(math.isnan(v) for v in report.mean_late_gain(gains, "missing"))


def test_stage_one_numbers_count_the_reference_runs_started_from_a_selected_checkpoint():
    table = pd.DataFrame(
        {
            "method": ["ref", "ref", "ref", "other"],
            "task": ["rte", "sst2", "mrpc", "rte"],
            "seed": [1, 1, 1, 1],
            "selected": [True, False, True, True],
            "twin_gap": [0.4, 0.0, 1.25, 9.0],
            "twin_best_step": [10, 30, 20, 10],
            "twin_steps": [30, 30, 30, 30],
            "twin_score": [80.0, 81.0, 70.0, 60.0],
            "twin_final_score": [79.6, 81.0, 68.75, 51.0],
        }
    )
    numbers, selected = report.stage_one_numbers(table, "ref")
    assert numbers == {"stage_one_selected": 2, "stage_one_runs": 3, "stage_one_gap": 1.25}
    assert list(selected["task"]) == ["rte", "mrpc"] and "selected" not in selected.columns
    assert report.stage_one_numbers(pd.DataFrame(), "ref")[0]["stage_one_runs"] == 0


def test_expert_runs_and_the_reports_the_heads_chapter_reads():
    planned = [
        SimpleNamespace(label=label, run_id=f"{label}-{seed}")
        for seed in (1, 2)
        for label in ("tinyattn_e1", "tinyattn_e4", "lora", "tinyattn_e4_indep")
    ]
    runs = pd.DataFrame({"method": ["lora", "tinyattn_e4", "tinyattn_e1"], "score": [1, 2, 3]})
    # the labels come from the profile's roles, whatever they are called
    roles = {"reference": "tinyattn_e1", "expert_counts": ["tinyattn_e4"]}
    roles |= {"independent": "tinyattn_e4_indep", "sequential": "not_planned"}
    ablations = study_of(runs, planned, roles=roles)
    assert report.expert_labels(ablations.profile) == [
        "tinyattn_e1",
        "tinyattn_e4",
        "tinyattn_e4_indep",
        "not_planned",
    ]
    expert, n_planned = report.expert_runs(ablations)
    assert list(expert["method"]) == ["tinyattn_e4", "tinyattn_e1"] and n_planned == 6
    glue_runs = [
        SimpleNamespace(label=m, run_id=f"cpu-{m}") for m in ("tinyattn_e4", "tinyattn_e1")
    ]
    glue = study_of(pd.DataFrame(), glue_runs, roles={"experts": "tinyattn_e4"})
    ids = report.analysed_run_ids(ablations, glue)
    assert ids == {p.run_id for p in planned if p.label != "lora"} | {"cpu-tinyattn_e4"}
    untuned = study_of(pd.DataFrame(), planned, waiting="tuning", roles=roles)
    assert report.analysed_run_ids(untuned, glue) == {"cpu-tinyattn_e4"}
    renamed = study_of(runs, planned, roles=roles | {"reference": "one_expert"})
    assert list(report.expert_runs(renamed)[0]["method"]) == ["tinyattn_e4"]


def test_deployment_table_and_how_much_faster_the_average_serves():
    rows = []
    for run, (trained_ms, averaged_ms) in enumerate([(3.0, 1.0), (5.0, 1.0)]):
        for variant, score, ms in (
            ("trained_form", 85.0, trained_ms),
            ("averaged", 84.0, averaged_ms),
        ):
            rows.append(
                {"run_id": f"r{run}", "init": "two-stage", "variant": variant, "score": score + run}
                | {"ms_per_example": ms, "agreement_with_trained": 0.99, "encoder_passes": 1}
            )
    table = report.deployment_table(pd.DataFrame(rows))
    averaged = table.loc[("two-stage", "averaged")]
    assert (averaged["runs"], averaged["score"], averaged["ms_per_example"]) == (2, 84.5, 1.0)
    assert report.serving_speedup(table) == 4.0  # (3 + 5) / 2 ms against 1 ms
    assert report.deployment_table(pd.DataFrame()).empty
    assert report.serving_speedup(pd.DataFrame()) is None


def test_compute_display_names_its_columns_in_words():
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "method": ["m", "m", "m"],
            "device": ["cpu", "cpu", "NVIDIA H100"],
            "compute_seconds": [3600.0, 7200.0, 60.0],
            "tokens_per_second": [100.0, 300.0, 5000.0],
        }
    )
    table = report.compute_display(runs)
    assert list(table.columns) == [
        "device",
        "runs",
        "hours",
        "minutes per run",
        "tokens per second",
    ]
    cpu = table[table["device"] == "cpu"].iloc[0]
    assert (cpu["runs"], cpu["hours"], cpu["minutes per run"]) == (2, 3.0, 90.0)
    assert cpu["tokens per second"] == 200.0


def quartiles(median: float, spread: float = 0.01) -> dict:
    return {"q1": median - spread, "median": median, "q3": median + spread}


def bench_file(commit: str, averaged: float) -> dict:
    """The parts of a ``tinyattn bench`` file the efficiency chapter reads (and the reader checks)."""
    return {
        "git": {"commit": commit},
        "machine": {"processor": "x86_64", "cpu_count": 2},
        "versions": {"torch": "2.13.0"},
        "train_step_ratio": {"tinyattn_e4": 1.05},
        "inference_ratio": {"tinyattn_averaged": averaged},
        "paired_inference_ratio": {
            "tinyattn_averaged": quartiles(averaged),
            "tinyattn_e4": quartiles(1.2),
            "lora_merged": quartiles(1.0, 0.05),
        },
        "share_inference_ratio": {
            "tinyattn_averaged": quartiles(1.01),
            "tinyattn_e4": quartiles(1.1),
        },
        "paired_train_step_ratio": {
            "tinyattn_e1": quartiles(0.9),
            "tinyattn_e4": quartiles(1.05),
            "tinyattn_e4_stored": quartiles(1.0),
        },
        "peak_memory_mb": {"tinyattn_e4": 390.04, "tinyattn_e1": 367.56, "lora": 399.9}
        | {"tinyattn_e4_stored": 650.0},
    }


def test_bench_numbers_quote_the_ratios_and_judge_the_targets():
    numbers = report.bench_numbers(bench_file("abc", averaged=1.05))
    assert numbers["bench_averaged_ratio"] == "1.050 (quartiles 1.040–1.060)"
    assert numbers["bench_latency_verdict"] == "is met"  # in-pass share 1.01 +- 0.01
    assert numbers["bench_latency_paired_verdict"] == "is missed"  # end to end 1.05 +- 0.01
    assert numbers["bench_train_verdict"] == "is met"
    assert numbers["bench_memory_verdict"] == "is met"
    assert (numbers["bench_tiny_memory"], numbers["bench_e1_memory"]) == (390.0, 367.6)
    assert numbers["bench_recompute_cost"] == "+5.0"  # 1.05 / 1.00 - 1
    assert numbers["bench_recompute_spread"] == "beyond"


def test_bench_stages_one_column_per_stage_found(tmp_path):
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(json.dumps(bench_file("1111111aaa", averaged=1.3)))
    second.write_text(json.dumps(bench_file("2222222bbb", averaged=1.05)))
    files = {"first": first, "missing": tmp_path / "none.json", "second": second}
    table = report.bench_stages(files)
    processor = json.loads(first.read_text())["machine"]["processor"]
    assert list(table.columns) == [
        f"first (1111111, {processor})",
        f"second (2222222, {processor})",
    ]
    assert table.loc["averaged / backbone (inference)"].tolist() == [1.3, 1.05]
    assert table.loc["E = 4 memory MB"].tolist() == [390.04, 390.04]


def test_processor_numbers_quote_one_code_on_two_processors(tmp_path):
    there, here, other = tmp_path / "there.json", tmp_path / "here.json", tmp_path / "other.json"
    for path, averaged, processor, backbone_s in ((there, 1.01, "A", 0.5), (here, 1.05, "B", 0.4)):
        data = bench_file("1111111aaa", averaged) | {"lengths": [64, 128]}
        data["machine"] = data["machine"] | {"processor": processor}
        data["share_inference_ratio"]["tinyattn_averaged"] = quartiles(averaged)
        data["inference"] = {"128": {"backbone": {"median_s": backbone_s}}}
        path.write_text(json.dumps(data))
    numbers = report.processor_numbers(there, here)
    assert (numbers["processor_commit"], numbers["processor_there"]) == ("1111111", "A")
    assert numbers["processor_here"] == "B"
    assert numbers["processor_share_there"] == "1.010 (quartiles 1.000–1.020)"
    assert numbers["processor_share_here"] == "1.050 (quartiles 1.040–1.060)"
    assert numbers["processor_e4_train_here"] == "1.050 (quartiles 1.040–1.060)"
    assert (numbers["processor_backbone_ms_there"], numbers["processor_backbone_ms_here"]) == (
        500,
        400,
    )
    other.write_text(json.dumps(json.loads(here.read_text()) | {"git": {"commit": "2222222"}}))
    with pytest.raises(ValueError, match="different commits"):
        report.processor_numbers(there, other)


def gpu_row(code: str, shape: str, averaged: float) -> dict:
    return {
        "code": code,
        "batch × tokens": shape,
        "averaged / backbone": averaged,
        "averaged, in-pass share": averaged - 0.1,
        "E = 4 / backbone": averaged + 0.5,
        "merged LoRA / backbone (null control)": 1.0 + averaged / 100,
        "backbone ms": 8.0,
        "backbone kernel ms": 2.0,
        "kernels per pass, backbone": 100.0,
        "kernels per pass, averaged": 160.0 if code == "before" else 130.0,
        "kernel time, averaged / backbone": 1.02,
        "E = 4 / LoRA (training step)": 1.4,
    }


def test_gpu_numbers_summarise_the_processes_before_and_after():
    gpu = pd.DataFrame(
        {
            "before-b32-1": gpu_row("before", "32 × 128", 1.6),
            "before-b32-2": gpu_row("before", "32 × 128", 1.8),
            "after-b32-1": gpu_row("after", "32 × 128", 1.3),
            "after-b32-2": gpu_row("after", "32 × 128", 1.5),
            "after-b128-1": gpu_row("after", "128 × 512", 1.1),
        }
    ).T
    benches = {name: bench_file("c", 1.0) for name in gpu.index}
    for i, name in enumerate(["after-b32-1", "after-b32-2"]):  # the other adapters, end to end
        others = {"houlsby": 1.2 + i, "pfeiffer": 1.3, "lora_unmerged": 1.1}
        benches[name]["paired_inference_ratio"] |= {m: quartiles(v) for m, v in others.items()}
    numbers = report.gpu_numbers(gpu, benches)
    assert numbers["gpu_small_before_runs"] == 2 and numbers["gpu_small_after_runs"] == 2
    assert numbers["gpu_small_after_ratio"] == "1.30–1.50"
    assert numbers["gpu_small_before_kernels_per_layer"] == 10.0  # 60 more kernels over 6 layers
    assert numbers["gpu_small_after_kernels_per_layer"] == 5.0
    assert numbers["gpu_large_after_ratio"] == 1.1 and numbers["gpu_large_after_e4"] == 1.6
    assert numbers["gpu_small_overlap"] == "ranges that do not overlap"
    assert numbers["gpu_null_spread"] == "1.01–1.02"
    assert numbers["gpu_small_stored_train"] == "1.00–1.00"
    assert numbers["gpu_small_others"] == (
        "houlsby 1.20–2.20, pfeiffer 1.30–1.30, lora unmerged 1.10–1.10"
    )


def test_parameter_counts_follow_the_formula_on_a_tiny_encoder():
    table, backbone = report.parameter_counts(tiny_encoder("bert"), num_labels=2)
    assert backbone == sum(p.numel() for p in tiny_encoder("bert").parameters())
    e1 = table.loc["tinyattn_e1"]
    assert e1["adapter, trained"] == e1["adapter, deployed"] == 2 * param_count(32)
    e4 = table.loc["tinyattn_e4"]
    assert (e4["adapter, trained"], e4["adapter, deployed"]) == (
        8 * param_count(32),
        e1["adapter, deployed"],
    )
    assert e1["% of backbone"] == pytest.approx(100 * 2 * param_count(32) / backbone)
    config = SimpleNamespace(num_hidden_layers=2, hidden_size=32)
    numbers = report.parameter_numbers(table, config, backbone)
    assert numbers["tinyattn_e1_params"] == 2 * (7 * 32 + 3)
    assert numbers["roberta_large_paper_params"] == 24 * (7 * 1024 + 11)
    assert numbers["roberta_large_paper_percent"] == pytest.approx(100 * 24 * 7179 / 355e6)
    wrong = table.assign(**{"adapter, trained": table["adapter, trained"] + 1})
    with pytest.raises(AssertionError, match="do not follow"):
        report.parameter_numbers(wrong, config, backbone)


def test_profile_tables_of_a_plain_and_a_tuned_profile(tmp_path):
    runs = report.planned_runs(["quick", "ablations"], str(tmp_path))  # no tuning run in tmp_path
    quick = runs[runs["profile"] == "quick"]
    assert len(quick) == 12 and not quick["awaiting_tuning"].any()
    assert runs[runs["profile"] == "ablations"]["awaiting_tuning"].all()
    budgets = report.budget_table(runs).loc["quick"]
    assert budgets.loc["sst2", "train_cap"] == 1500 and budgets.loc["sst2", "seeds"] == "42"
    assert budgets.loc["stsb", "runs"] == 6 and budgets.loc["stsb", "warmup_ratio"] == "0.06"
    rates = report.learning_rate_table(runs, ["quick", "ablations"])
    assert rates.loc["lora", "quick"] == "0.0005"
    assert rates.loc["tinyattn_e1", "ablations"] == "chosen by `tune` (pending)"
    same = pd.DataFrame({"a": ["1", None], "b": ["2", "3"], "c": ["1", None], "d": ["1", "4"]})
    merged = report.merge_equal_columns(same)
    assert list(merged.columns) == ["a = c", "b", "d"] and merged["a = c"].tolist()[0] == "1"
    sizes = report.task_table(["sst2", "stsb"])
    assert sizes.loc["stsb", "metric"] == "pearson" and sizes.loc["sst2", "dev"] == 872
    numbers = report.profile_numbers(runs)
    assert (
        numbers["quick_profile_runs"] == 12 and numbers["quick_profile_task_names"] == "sst2, stsb"
    )
    assert numbers["quick_profile_cpu_hours"] == round(quick["cpu_hours"].sum(), 1)
