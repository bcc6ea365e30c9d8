"""The budget study (``tinyattn.analysis.budget``): runs paired across budgets, partial grids, the C1 verdict
at each budget, and the long runs' learning curves, on synthetic records."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import matplotlib
import pandas as pd
import papermill
import pytest
from conftest import fake_record

from tinyattn.analysis import budget, budget_report, decidability
from tinyattn.analysis.plots import budget_curves_figure
from tinyattn.records import write_json_atomic
from tinyattn.study.profiles import load_profile
from tinyattn.study.tuning import planned_runs

matplotlib.use("Agg")
FAMILY = ["ia3", "houlsby", "full_ft"]
METHODS = ["tinyattn_e1", *FAMILY]


def _plan(tasks=("mrpc", "stsb"), seeds=(13, 42, 87), epochs=10) -> pd.DataFrame:
    rows = [
        {"task": t, "method": m, "seed": s, "epochs": epochs, "run_id": f"{t}-{m}-s{s}-long"}
        for t in tasks
        for m in METHODS
        for s in seeds
    ]
    return pd.DataFrame(rows).assign(estimate_hours=1.0)


def _runs(plan: pd.DataFrame, score, *, suffix: str, epochs, hours=1.0) -> pd.DataFrame:
    """Finished runs for every row of ``plan``: ``score(task, method, seed)`` (None: not finished)."""
    rows = []
    for row in plan.itertuples():
        value = score(row.task, row.method, row.seed)
        if value is None:
            continue
        rows.append(
            {
                "task": row.task,
                "method": row.method,
                "seed": row.seed,
                "final_score": value,
                "epochs": epochs(row.task) if callable(epochs) else epochs,
                "run_id": row.run_id.replace("long", suffix),
                "wall_seconds": 3600.0 * hours,
            }
        )
    return pd.DataFrame(rows)


def _gap(offsets: dict[str, float], base: float = 80.0):
    """Scores where each method sits ``offsets[method]`` points above tiny attention, plus a small
    per-(task, seed) wobble so that no two pairs are equal."""

    def score(task, method, seed):
        wobble = 0.1 * (seed % 7) + (0.3 if task == "stsb" else 0.0)
        return base + wobble + offsets.get(method, 0.0)

    return score


def test_runs_pair_by_task_method_and_seed_and_pending_ones_stay_empty():
    plan = _plan()
    short = _runs(
        plan, _gap({"ia3": 2.0}), suffix="short", epochs=lambda t: 3 if t == "mrpc" else 2
    )
    long = _runs(
        plan, lambda t, m, s: 90.0 if (m, s) == ("ia3", 42) else None, suffix="long", epochs=10
    )
    pairs = budget.pair_budgets(plan, long, short).set_index(["task", "method", "seed"])
    assert len(pairs) == 24
    row = pairs.loc[("mrpc", "ia3", 42)]
    assert row["long_score"] == 90.0 and row["short_score"] == pytest.approx(82.0)
    assert row["change"] == pytest.approx(8.0) and row["short_run_id"] == "mrpc-ia3-s42-short"
    assert (row["short_epochs"], row["long_epochs"]) == (3, 10)
    assert pairs.loc[("stsb", "ia3", 42), "short_epochs"] == 2
    pending = pairs.drop(index=[("mrpc", "ia3", 42), ("stsb", "ia3", 42)])
    assert pending["long_score"].isna().all() and pending["change"].isna().all()
    assert pending["short_score"].notna().all()


def test_pairs_can_be_made_on_the_best_dev_evaluation_instead_of_the_end():
    plan = _plan()
    short = _runs(plan, _gap({}), suffix="short", epochs=3).assign(
        score=lambda f: f["final_score"] + 1
    )
    long = _runs(plan, _gap({}), suffix="long", epochs=10).assign(
        score=lambda f: f["final_score"] + 4
    )
    end = budget.pair_budgets(plan, long, short)
    best = budget.pair_budgets(plan, long, short, score="score")
    assert end["change"].tolist() == pytest.approx([0.0] * 24)  # the protocol: end of training
    assert best["change"].tolist() == pytest.approx([3.0] * 24)  # the best evaluations: 4 - 1
    assert (best["short_score"] - end["short_score"]).tolist() == pytest.approx([1.0] * 24)


def test_pairing_refuses_a_second_record_and_a_run_outside_the_plan():
    plan = _plan()
    short = _runs(plan, _gap({}), suffix="short", epochs=3)
    twice = pd.concat([short, short.iloc[[0]].assign(run_id="again")])
    with pytest.raises(ValueError, match="more than one finished record.*again"):
        budget.pair_budgets(plan, pd.DataFrame(), twice)
    stray = _runs(plan.iloc[[0]].assign(seed=7), _gap({}), suffix="long", epochs=10)
    with pytest.raises(ValueError, match="outside its plan"):
        budget.pair_budgets(plan, stray, short)
    with pytest.raises(ValueError, match="plans no run"):
        budget.pair_budgets(plan.iloc[0:0], pd.DataFrame(), short)


def test_comparisons_use_only_the_pairs_finished_at_both_budgets():
    plan = _plan()
    short = _runs(plan, _gap({m: 2.0 for m in FAMILY}), suffix="short", epochs=3)
    # long budget: tiny attention on every MRPC seed, IA3 on two of them, nothing else yet
    done = {("mrpc", "tinyattn_e1", s) for s in (13, 42, 87)} | {
        ("mrpc", "ia3", 13),
        ("mrpc", "ia3", 87),
    }
    long = _runs(
        plan, lambda t, m, s: 85.0 if (t, m, s) in done else None, suffix="long", epochs=10
    )
    pairs = budget.pair_budgets(plan, long, short)
    runs = budget.paired_runs(pairs)
    assert len(runs["short"]) == len(runs["long"]) == 5  # the long budget's five runs, both budgets
    table = budget.compare(pairs, "tinyattn_e1", FAMILY).set_index(["budget", "method"])
    assert table.loc[("short", "ia3"), "pairs"] == table.loc[("long", "ia3"), "pairs"] == 2
    # the same two pairs at both budgets: at the short budget IA3 leads by 2 points in both
    assert table.loc[("short", "ia3"), "mean_difference"] == pytest.approx(-2.0)
    assert table.loc[("long", "ia3"), "mean_difference"] == pytest.approx(0.0)
    for b in budget.BUDGETS:
        assert table.loc[(b, "houlsby"), "pairs"] == 0
        assert table.loc[(b, "houlsby"), "outcome"] == "too few pairs"
    change = budget.verdict_change(table.reset_index())
    assert change["short"] == change["long"] == "not established"


def test_no_pair_at_all_gives_no_verdict_and_the_sentence_says_how_many_runs_are_done():
    plan = _plan()
    short = _runs(plan, _gap({}), suffix="short", epochs=3)
    done = {("mrpc", "full_ft", 13), ("mrpc", "full_ft", 42)}
    long = _runs(
        plan, lambda t, m, s: 81.0 if (t, m, s) in done else None, suffix="long", epochs=10
    )
    pairs = budget.pair_budgets(plan, long, short)
    table = budget.compare(pairs, "tinyattn_e1", FAMILY)
    assert set(table["outcome"]) == {"too few pairs"}
    assert budget.c1_verdict(table[table["budget"] == "long"]) == "no verdict"
    study = _study(pairs)
    text = budget_report.headline(study, table)
    assert text.startswith("With 2 of 24 runs done") and "cannot yet say" in text
    assert "`full_ft` on mrpc" in text  # 81.0 against 80.6 (seed 13) and 80.0 (seed 42)
    assert "by +0.7 points on average (from +0.4 to +1.0)" in text
    assert ". " not in text and text.endswith(".")  # one sentence
    nothing = budget.pair_budgets(plan, pd.DataFrame(), short)
    text = budget_report.headline(_study(nothing), budget.compare(nothing, "tinyattn_e1", FAMILY))
    assert text.startswith("With 0 of 24 runs done") and text.endswith(
        "finished at both budgets yet."
    )


def _study(pairs: pd.DataFrame) -> budget.BudgetStudy:
    fake = type("Runs", (), {})

    def runs(name):
        r = fake()
        r.profile = {"name": name}
        return r

    return budget.BudgetStudy(runs("budget"), runs("cpu"), pairs, "tinyattn_e1", FAMILY)


def test_the_change_sentence_gives_each_methods_move_per_task_reference_first():
    plan = _plan()
    short = _runs(plan, _gap({}), suffix="short", epochs=3)
    moved = {"tinyattn_e1": 1.0, "ia3": -2.0, "houlsby": 0.5, "full_ft": -1.0}

    def long_score(task, method, seed):
        if task != "mrpc" or (method == "full_ft" and seed == 87):
            return None  # STS-B not run yet; one full fine-tuning seed missing
        return _gap({})(task, method, seed) + moved[method]

    pairs = budget.pair_budgets(plan, _runs(plan, long_score, suffix="long", epochs=10), short)
    text = budget_report.change_sentence(_study(pairs))
    assert text.startswith("Measured with 10 epochs instead of the `cpu` budget")
    assert "on mrpc, `tinyattn_e1` +1.0 (3 seeds), `ia3` -2.0 (3 seeds), `houlsby` +0.5" in text
    assert "`full_ft` -1.0 (2 seeds)." in text and "stsb" not in text
    none = budget.pair_budgets(plan, _runs(plan, lambda *a: None, suffix="long", epochs=10), short)
    assert (
        budget_report.change_sentence(_study(none))
        == "No run of the longer budget has finished yet."
    )


@pytest.mark.parametrize("flip", [True, False])
def test_the_c1_verdict_changes_with_the_budget_only_when_the_data_do(flip):
    # three tasks x three seeds: nine pairs, enough for the declared rule to resolve a comparison
    plan = _plan(tasks=("mrpc", "stsb", "rte"))
    short = _runs(plan, _gap({m: 2.0 for m in FAMILY}), suffix="short", epochs=3)  # all beat tiny
    long_gap = {m: -2.0 for m in FAMILY} if flip else {m: 2.0 for m in FAMILY}
    long = _runs(plan, _gap(long_gap, base=84.0), suffix="long", epochs=10)
    pairs = budget.pair_budgets(plan, long, short)
    table = budget.compare(pairs, "tinyattn_e1", FAMILY)
    assert (table["pairs"] == 9).all()
    change = budget.verdict_change(table)
    assert change["short"] == "does not hold"
    assert change["long"] == ("holds" if flip else "does not hold")
    assert change["changed"] is flip
    assert set(change["methods"]) == (set(FAMILY) if flip else set())
    study = _study(pairs)
    shown = budget_report.comparison_table(table, budget_report.budget_labels(study))
    row = shown.loc[("ia3", "10 epochs")]
    assert row["won–lost"] == ("9–0" if flip else "0–9") and row["pairs"] == 9
    assert row["difference"] == ("+2.00 (+2.00, +2.00)" if flip else "-2.00 (-2.00, -2.00)")
    assert row["sign p / Holm"] == "0.004 / 0.012"  # 2 / 2^9, times 3
    assert list(shown.index.get_level_values(0))[:2] == ["ia3", "ia3"]  # both budgets together
    text = budget_report.headline(study, table)
    assert text.startswith("With all 36 runs done")
    if flip:
        assert (
            "C1's verdict goes from *does not hold* at the `cpu` budget (3 epochs)" in text
            and "to *holds*" in text
        )
        assert "from -2.00 to +2.00 points" in text and "winning 9 of 9 pairs" in text
    else:
        assert "C1's verdict is *does not hold* at both budgets" in text
    assert "can be resolved" not in text  # nine pairs can be
    # the same grid with only seed 13 finished at 10 epochs: three pairs cannot be resolved yet
    partial = budget.pair_budgets(plan, long[long["seed"] == 13], short)
    table = budget.compare(partial, "tinyattn_e1", FAMILY)
    text = budget_report.headline(_study(partial), table)
    assert text.startswith(
        "With 12 of 36 runs done, provisionally, C1's verdict is *not established*"
    )
    assert "no comparison of 3 pairs can be resolved yet; it needs 7" in text


def test_six_pairs_cannot_be_resolved_under_holm_over_three_and_the_sentence_says_so():
    assert decidability.sign_floor(6, 3)[1] == pytest.approx(3 * 2 / 2**6)
    assert decidability.sign_floor(0, 3) == (1.0, 1.0)
    assert decidability.pairs_needed(3) == 7  # 3 x 2 / 2^7 = 0.047
    assert decidability.pairs_needed(1) == 6
    plan = _plan()
    short = _runs(plan, _gap({m: 2.0 for m in FAMILY}), suffix="short", epochs=3)
    long = _runs(plan, _gap({m: -5.0 for m in FAMILY}), suffix="long", epochs=10)
    pairs = budget.pair_budgets(plan, long, short)
    table = budget.compare(pairs, "tinyattn_e1", FAMILY)
    assert (table.loc[table["budget"] == "long", "wins"] == 6).all()  # every pair won, yet
    assert set(table["outcome"]) == {"not resolved"}
    text = budget_report.headline(_study(pairs), table)
    # the design cannot reach a verdict, so the sentence gives none: it gives the estimates
    assert "the budget grid cannot decide C1 at either budget" in text
    assert "even 6 of 6 won give a Holm p of 0.094 (7 pairs are the fewest that can)" in text
    assert "not established" not in text and "6 of 6 pairs won" in text


def test_score_table_shows_each_seed_short_to_long_and_the_mean_change():
    plan = _plan()
    short = _runs(plan, _gap({}), suffix="short", epochs=lambda t: 3 if t == "mrpc" else 2)
    long = _runs(
        plan,
        lambda t, m, s: 90.0 if m == "ia3" and t == "mrpc" and s != 87 else None,
        suffix="long",
        epochs=10,
    )
    table = budget_report.score_table(budget.pair_budgets(plan, long, short))
    assert list(table.columns) == ["epochs", "seed 13", "seed 42", "seed 87", "mean change"]
    row = table.loc[("mrpc", "ia3")]
    assert row["seed 13"] == "80.6 → 90.0" and row["seed 87"] == "80.3 → …"
    assert row["epochs"] == "3 → 10" and row["mean change"] == "+9.7 (2 of 3)"  # 9.4 and 10.0
    assert table.loc[("stsb", "houlsby"), "epochs"] == "2 → 10"
    assert table.loc[("stsb", "houlsby"), "mean change"] == "…"
    assert list(table.index)[:4] == [("mrpc", m) for m in METHODS]  # the profile's order


def test_remaining_runs_are_projected_from_their_twins_and_the_finished_runs_pace():
    plan = _plan()
    short = _runs(plan, _gap({}), suffix="short", epochs=2, hours=0.5)
    long = _runs(
        plan, lambda t, m, s: 80.0 if s == 13 else None, suffix="long", epochs=10, hours=5.0
    )
    pairs = budget.pair_budgets(plan, long, short)
    assert budget.calibration(pairs) == pytest.approx(2.0)  # 5 h against 0.5 h x 10 / 2
    rest = budget.remaining(_study(pairs))
    assert len(rest) == 16 and set(rest["seed"]) == {42, 87}
    assert rest["projected_hours"].tolist() == pytest.approx([5.0] * 16)


# ------------------------------------------------------------------- records on disk, both profiles


def _record(params, score: float, evals_per_epoch: int = 2) -> dict:
    """A finished run's record with an evaluation every half epoch, climbing to ``score``."""
    n = int(params.epochs * evals_per_epoch)
    curve = [score - 0.001 * (n - 1 - i) for i in range(n)]  # 0.1 points per evaluation
    return fake_record(params, curve, evals_per_epoch, wall_seconds=70.0 * params.epochs)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """The tuning grid and the `cpu` study finished; of the `budget` study, the MRPC runs of seed 13."""
    out = tmp_path_factory.mktemp("runs")
    for name in ("tune", "cpu"):
        for p in planned_runs(name, str(out)):
            write_json_atomic(out / f"{p.run_id}.json", _record(p, 0.7, evals_per_epoch=1))
    for p in planned_runs("budget", str(out)):
        if p.task == "mrpc" and p.seed == 13:
            write_json_atomic(out / f"{p.run_id}.json", _record(p, 0.8))
    return out


def test_load_budget_reads_both_profiles_from_records(records):
    study = budget.load_budget(str(records))
    assert (study.done, study.planned) == (4, 24)
    assert study.reference == "tinyattn_e1" and study.family == FAMILY
    assert study.pairs["short_score"].notna().all()  # every `cpu` twin found
    done = study.pairs.dropna(subset=["long_score"])
    assert set(zip(done["task"], done["seed"])) == {("mrpc", 13)}
    assert done["change"].tolist() == pytest.approx([10.0] * 4)
    assert set(done["short_epochs"]) == {3.0} and set(done["long_epochs"]) == {10}
    labels = budget_report.budget_labels(study)
    assert labels == {"short": "2–3 epochs", "long": "10 epochs"}
    table = budget.compare(study.pairs, study.reference, study.family)
    assert (table["pairs"] == 1).all()
    text = budget_report.headline(study, table)
    assert text.startswith("With 4 of 24 runs done, the budget grid cannot decide C1")
    assert "on the pairs finished at both budgets" in text
    assert text.count("+0.00, 0 of 1 pairs won") == 6  # every method scores alike here: a tie


def test_a_loaded_study_pairs_its_runs_again_on_another_score(records):
    """``scored_by`` re-pairs the runs already read, on the column it names, and leaves the study as
    it was: here the long runs' best evaluation is 3 points above their end."""
    study = budget.load_budget(str(records))
    runs = study.long.runs.assign(score=lambda f: f["final_score"] + 3.0)
    best = replace(study, long=replace(study.long, runs=runs)).scored_by("score")
    assert best.pairs.dropna(subset=["long_score"])["change"].tolist() == pytest.approx([13.0] * 4)
    assert best.done == study.done and best.family == study.family
    assert study.pairs.dropna(subset=["long_score"])["change"].tolist() == pytest.approx([10.0] * 4)


def test_curves_of_the_long_runs_every_half_epoch(records):
    study = budget.load_budget(str(records))
    curves = budget.long_curves(study, str(records))
    assert len(curves) == 4 * 20  # four runs, two evaluations per epoch for ten epochs
    assert set(curves["method"]) == set(METHODS)
    one = curves[curves["method"] == "ia3"].sort_values("epoch")
    assert one["epoch"].tolist() == pytest.approx([0.5 * i for i in range(1, 21)])
    assert one["score"].iloc[-1] == pytest.approx(80.0) and one["score"].iloc[0] == pytest.approx(
        78.1
    )
    table = budget.curve_table(curves, {"mrpc": 3, "stsb": 2}, METHODS)
    assert table["method"].tolist() == METHODS  # the profile's order, not the files'
    table = table.set_index(["task", "method"])
    row = table.loc[("mrpc", "ia3")]
    assert row["seeds"] == 1 and row["best_epoch"] == 10.0 and row["end"] == pytest.approx(80.0)
    assert row["at_short_end"] == pytest.approx(80.0 - 0.1 * 14)  # the evaluation at epoch 3
    assert row["late_gain"] == pytest.approx(0.1)
    fig = budget_curves_figure(curves, METHODS, {"mrpc": 3})
    (ax,) = fig.axes
    assert ax.get_title() == "mrpc" and len(ax.get_lines()) == 4 * 2 + 1  # seed + mean each, budget
    empty = budget.long_curves(
        budget.load_budget(str(records), long="budget"), str(records / "none")
    )
    assert empty.empty
    assert budget.curve_table(pd.DataFrame(), {}).empty


def test_load_budget_refuses_a_reference_the_profile_lacks(records):
    with pytest.raises(ValueError, match="no method 'tinyattn_e4'"):
        budget.load_budget(str(records), reference="tinyattn_e4")
    assert not math.isnan(decidability.sign_floor(7, 3)[1])


def _run_chapter(runs_dir: Path, tmp_path: Path) -> tuple[list[dict], dict[str, str]]:
    """The budget chapter executed on ``runs_dir``: its cells, and each glued value as text."""
    book = Path(__file__).resolve().parent.parent / "book"
    out = tmp_path / "budget.ipynb"
    papermill.execute_notebook(
        str(book / "budget.ipynb"),
        str(out),
        parameters={"runs_dir": str(runs_dir)},
        cwd=str(book),
        progress_bar=False,
    )
    cells = json.loads(out.read_text())["cells"]
    glued = {}
    for output in [o for c in cells for o in c.get("outputs", [])]:
        for mime, value in output.get("data", {}).items():
            if mime.startswith("application/papermill.record/"):
                key = output["metadata"]["scrapbook"]["name"]
                glued.setdefault(key, "".join(value) if isinstance(value, list) else str(value))
                assert not glued[key].startswith("np."), f"{key} glues a NumPy scalar"
    return cells, glued


@pytest.mark.e2e
def test_the_chapter_opens_with_its_answer_on_a_partial_grid(records, tmp_path):
    cells, glued = _run_chapter(records, tmp_path)
    assert cells[1]["cell_type"] == "markdown" and "{glue:md}`budget_headline`" in "".join(
        cells[1]["source"]
    )
    assert glued["budget_done"] == "4" and glued["budget_planned"] == "24"
    assert "With 4 of 24 runs done" in glued["budget_headline"]
    assert glued["budget_min_holm_p"] == "0.09375" and glued["budget_pairs_needed"] == "7"
    assert glued["budget_remaining"] == "20"
    sources = [(c["cell_type"], c.get("metadata", {}).get("tags", [])) for c in cells]
    code = [tags for kind, tags in sources if kind == "code"]
    assert all(tags for tags in code[:3])  # parameters, imports and loading are folded away
    # every glue role in the text has a glued value
    text = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    roles = set(re.findall(r"\{glue:(?:text|md)\}`([a-z0-9_]+)", text))
    assert roles and roles <= set(glued), roles - set(glued)


@pytest.mark.e2e
def test_the_chapter_on_the_finished_grid_states_its_answer(tmp_path):
    """Every `budget` run done, tiny attention 1-3 points behind each method at both budgets: the
    chapter says so without "provisionally", reports the verdict at both budgets and why six pairs
    cannot resolve it, and has nothing left to run."""
    out = tmp_path / "runs"
    out.mkdir()
    behind = {"tinyattn_e1": 0.0, "ia3": 0.01, "houlsby": 0.02, "full_ft": 0.03}
    for name, base in (("tune", 0.7), ("cpu", 0.7), ("budget", 0.8)):
        for p in planned_runs(name, str(out)):
            score = base + behind.get(p.label, 0.0) + 0.001 * (p.seed % 7)
            write_json_atomic(out / f"{p.run_id}.json", _record(p, score, evals_per_epoch=2))
    _, glued = _run_chapter(out, tmp_path)
    headline = glued["budget_headline"]
    # no verdict the design could never reach: the estimates, every method, at both budgets
    assert headline.startswith("With all 24 runs done, the budget grid cannot decide C1 at either")
    assert "provisionally" not in headline and "not established" not in headline
    assert "even 6 of 6 won give a Holm p of 0.094 (7 pairs are the fewest that can)" in headline
    for method in ("ia3", "houlsby", "full_ft"):
        assert headline.count(f"`{method}` -") == 2  # behind at both budgets
    assert headline.count("0 of 6 pairs won") == 6
    assert glued["budget_intro"].startswith(
        "'no verdict (its design cannot reach one); tiny attention"
    )
    assert "0 of 6 pairs won" in glued["budget_best_estimates_long"]
    assert glued["budget_done"] == glued["budget_planned"] == "24"
    assert glued["budget_remaining"] == "0" and glued["budget_pairs_now"] == "6"
    assert (
        glued["budget_c1_short"] == glued["budget_c1_long"] == "'not established'"
    )  # a str's repr
    assert glued["budget_c1_changed"] == "'does not change'"
    assert glued["budget_best_c1_long"] == "'not established'"  # the secondary view, on best dev


def test_the_paper_budget_profile_is_the_cpu_study_at_twenty_epochs():
    """Every `cpu` run of RTE, MRPC, STS-B and CoLA has a `paper_budget` twin that differs from it in
    the number of epochs alone (same method, options, learning rate and seed), planned from the
    committed `tune` records; like `budget`, it is pinned to the `cpu` study's code."""
    pins = {name: load_profile(name).get("code") for name in ("cpu", "budget", "paper_budget")}
    assert len(set(pins.values())) == 1 and pins["cpu"], pins
    runs_dir = str(Path(__file__).resolve().parent.parent / "results" / "runs")
    long = planned_runs("paper_budget", runs_dir)
    short = {(p.task, p.label, p.seed): p for p in planned_runs("cpu", runs_dir)}
    assert len(long) == 4 * 11 * 3 and {p.task for p in long} == {"rte", "mrpc", "stsb", "cola"}
    for p in long:
        twin = short[(p.task, p.label, p.seed)]
        assert p.epochs == 20 and twin.epochs < 20
        assert p.run_id != twin.run_id
        assert {**vars(p), "epochs": twin.epochs, "save_adapter": twin.save_adapter} == vars(twin)
