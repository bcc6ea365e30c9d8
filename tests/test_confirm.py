"""The confirmatory round: the margin rule's outcomes, what a design can decide, and the `confirm`
profile's plan, pin and records."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from tinyattn.analysis import confirm, confirm_report
from tinyattn.analysis.decidability import decidability, decides, ever_decides
from tinyattn.analysis.margin import MarginRule, SignRule, compare, family_verdicts
from tinyattn.records import read_records
from tinyattn.study.profiles import load_profile

RUNS = REPO / "results" / "runs"
RULE = MarginRule(margin=0.5, alpha=0.05)


def pairs(values_by_task: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {"task": task, "seed": seed, "difference": value}
        for task, values in values_by_task.items()
        for seed, value in enumerate(values)
    ]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the rule
def test_each_outcome_of_the_margin_rule():
    ahead = pairs({"a": [2.1, 1.9, 2.0, 2.2], "b": [1.0, 1.2, 0.9, 1.1]})
    behind = ahead.assign(difference=-ahead["difference"])
    tight = pairs({"a": [0.05, -0.02, 0.01, 0.0], "b": [0.02, 0.03, -0.01, 0.0]})
    noisy = pairs({"a": [3.0, -2.0, 1.5, -2.5], "b": [2.0, -3.0, 0.5, 1.0]})
    table = family_verdicts(
        {"ahead": ahead, "behind": behind, "tight": tight, "noisy": noisy}, RULE
    )
    outcomes = dict(zip(table["comparison"], table["outcome"]))
    assert outcomes == {
        "ahead": "ahead",
        "behind": "behind",
        "tight": "equivalent",
        "noisy": "undecided",
    }
    assert not table.set_index("comparison").loc["ahead", "within_margin"]


def test_the_estimate_is_blocked_by_task_not_pooled():
    """Each task weighs the same whatever its number of pairs: a task with four pairs at +3 and one
    with two at -1 average to +1, where pooling the six pairs would give +1.67."""
    diffs = pairs({"a": [3.0, 3.1, 2.9, 3.0], "b": [-1.0, -1.0]})
    assert compare(diffs, RULE)["estimate"] == pytest.approx(1.0)
    assert diffs["difference"].mean() == pytest.approx(1.67, abs=0.01)


def test_holm_over_the_family_can_undo_a_single_decision():
    """A comparison decided alone (p just under 0.05) is undecided in a family whose other member is
    far from decided: Holm multiplies the smallest p by the family's size."""
    base = {"a": [1.0, -0.5, 2.0, 0.5, -1.0, 1.5], "b": [0.5, 1.5, -1.0, 1.0, 2.0, -0.5]}
    close = pairs({task: [v + 0.2 for v in values] for task, values in base.items()})
    alone = family_verdicts({"close": close}, RULE)
    assert 0.025 < alone["p_diff"].iloc[0] < 0.05 and alone["outcome"].iloc[0] == "ahead"
    assert alone["ci_low"].iloc[0] > 0  # the 95 % interval alone excludes 0
    null = pairs({"a": [1.0, -1.0, 0.5, -0.5, 2.0, -2.0], "b": [0.3, -0.3, 1.0, -1.0, 0.0, 0.1]})
    family = family_verdicts({"close": close, "null": null}, RULE)
    assert family.set_index("comparison").loc["close", "outcome"] == "undecided"


def test_another_test_is_named_when_it_would_change_the_verdict():
    """One large pair carries a decided mean that the sign test (2 wins of 6) does not back."""
    skewed = pairs({"a": [9.0, 9.5, -0.1, -0.2, 9.2, -0.1], "b": [8.8, -0.1, 9.1, -0.3, 9.0, 9.4]})
    row = family_verdicts({"skewed": skewed}, RULE).iloc[0]
    assert row["outcome"] == "ahead" and row["sign_outcome"] == "undecided"
    assert row["another_test_differs"]
    assert confirm_report.other_tests(row) == "the sign test would say undecided"


def test_the_chapters_say_what_each_claims_comparisons_were_planned_to_decide(plan):
    assert confirm_report.design_words(plan, "C3") == "1 point with 80 % power"
    assert confirm_report.design_words(plan, "C2") == "0.5 or 1 points with 80 % power"


def test_other_tests_names_each_test_that_differs_and_what_it_says():
    """The sign test reads direction only (an equivalent outcome is its undecided); the bootstrap
    reads all four outcomes."""
    agree = {"outcome": "equivalent", "sign_outcome": "undecided", "boot_outcome": "equivalent"}
    assert confirm_report.other_tests(agree) == ""
    both = {"outcome": "undecided", "sign_outcome": "behind", "boot_outcome": "behind"}
    assert confirm_report.other_tests(both) == (
        "the sign test would say behind and the bootstrap would say behind"
    )


# ----------------------------------------------------------------------------- decidability
def test_the_six_pair_sign_test_design_can_never_decide():
    """The exploratory grids' rule on 6 pairs under Holm over 3: undecided at every effect."""
    spread = {"mrpc": 1.0, "sst2": 1.0}
    table = decidability(SignRule(), ["mrpc", "sst2"], 3, spread, family=3, simulations=300)
    assert not ever_decides(table)
    assert np.isnan(decides(table))
    seven = decidability(SignRule(), ["mrpc"], 7, {"mrpc": 0.5}, family=1, simulations=300)
    assert ever_decides(
        seven
    )  # 7 of 7 gives p = 0.016: the design changes the answer, not the rule


def test_the_margin_rule_decides_more_with_more_pairs():
    spread = {"a": 2.0, "b": 2.0}
    few = decidability(RULE, ["a", "b"], 3, spread, simulations=2000)
    many = decidability(RULE, ["a", "b"], 30, spread, simulations=2000)
    assert decides(many) == 1.0 and np.isnan(decides(few))
    at = many.set_index("effect")
    assert at.loc[2.0, "ahead"] > 0.99 and at.loc[-2.0, "behind"] > 0.99
    assert at.loc[0.0, ["ahead", "behind"]].sum() < 0.08  # false decisions near the level
    with pytest.raises(ValueError, match="no spread for task"):
        decidability(RULE, ["a", "c"], 3, spread)


# ----------------------------------------------------------------------------- the plan
@pytest.fixture(scope="module")
def plan():
    return confirm.load_plan()


def test_every_confirmatory_comparison_decides_what_the_plan_says(plan):
    """The decidability test: at its planned pairs, with the pilot's spreads, every declared comparison
    finds its planned effect in the right direction with the declared power."""
    pilot = confirm.pilot_runs(str(RUNS))
    averaging = confirm.averaging_spreads(
        str(REPO / "results" / "analysis"), pilot[pilot["grid"] == "cpu"]
    )
    summary = confirm.design_summary(plan, confirm.design(plan, pilot, averaging))
    assert summary["meets_plan"].all(), summary[["comparison", "decides", "planned"]]
    assert (summary["pairs"] >= 30).all()
    assert set(summary["comparison"]) == {
        "context",
        "attention_vs_bottleneck",
        "averaging",
        "experts",
        "experts_vs_compute",
    }


def test_the_plan_uses_new_seeds_and_the_end_of_training_score(plan):
    profile = load_profile("confirm")
    assert not set(plan.seeds) & {13, 42, 87}  # the pilot's seeds made the hypotheses
    assert profile["defaults"]["restore_best"] is False
    assert {c.treatment_score for c in plan.comparisons} == {"final_score"}
    averaging = next(c for c in plan.comparisons if c.name == "averaging")
    assert averaging.control_score == "final_unaveraged_score" and averaging.within_runs


def test_the_experts_start_from_the_reference_run():
    """`tinyattn_e4_seq`'s stage one is the profile's own `tinyattn_e1` run of the same seed."""
    status = confirm_status()
    by_id = {p.run_id: p for p in status.planned}
    experts = [p for p in status.planned if p.label == "tinyattn_e4_seq"]
    assert experts and all(by_id[p.stage_one().run_id].label == "tinyattn_e1" for p in experts)
    assert all(by_id[p.stage_one().run_id].seed == p.seed for p in experts)


def confirm_status():
    from tinyattn.study.status import profile_runs

    return profile_runs("confirm", str(RUNS))


def test_confirm_records_follow_the_plan():
    """Every record of the profile names the pinned commit, started after that commit was made, and
    all of them trained on one device class."""
    profile = load_profile("confirm")
    status = confirm_status()
    ids = {p.run_id for p in status.planned}
    records = [r for r in read_records(RUNS) if r["run_id"] in ids]
    if not records:
        pytest.skip("no run of the confirm profile is recorded yet")
    pin = profile["code"]
    assert {r["provenance"]["git"]["commit"][:7] for r in records} == {pin[:7]}
    assert confirm.started_before(records, confirm.commit_time(pin, REPO)) == []
    assert len(confirm.devices(status.runs)) == 1


def test_no_verdict_on_a_partial_grid(plan):
    with pytest.raises(ValueError, match="not complete"):
        confirm.verdicts(plan, pd.DataFrame(), complete=False)


def test_a_chapter_opens_with_the_verdict_only_on_the_whole_grid(plan):
    runs = pd.DataFrame(
        [
            {
                "method": m,
                "task": t,
                "seed": s,
                "final_score": score,
                "final_unaveraged_score": np.nan,
            }
            for t in plan.tasks
            for s in plan.seeds
            for m, score in (
                ("tinyattn_e1", 80.0 + s % 3),
                ("tinyattn_self", 75.0 + s % 3 - 0.1 * (s % 2)),
                ("bottleneck_matched", 70.0 + s % 3 + 0.1 * (s % 2)),
            )
        ]
    )
    pending = confirm_report.opening(plan, "C3", runs, done=10, planned=325)
    assert "10 of its 325 runs are done" in pending
    assert not any(word in pending for word in ("ahead", "behind", "holds", "fails", "points"))
    done = confirm_report.opening(plan, "C3", runs, done=325, planned=325)
    assert done.startswith("In the confirmatory round, C3 **holds**")
    assert "`context` ahead (+5.05 points, 95 % interval +5.0" in done
    assert re.search(
        r"`attention_vs_bottleneck` ahead \(\+9\.95 points, 95 % interval \+9\.\d\d to "
        r"\+9\.\d\d, over 65 pairs\)",
        done,
    )
    assert "would say" not in done  # every pair agrees: no other test differs
    short = confirm_report.claim_status(plan, "C3", runs, done=324, planned=325)
    assert short == "the confirmatory round decides it once its 325 runs are done, 324 so far"
    short = confirm_report.claim_status(plan, "C3", runs, done=325, planned=325)
    assert short == (
        "holds in the confirmatory round, on 65 pairs: context ahead, attention_vs_bottleneck ahead"
    )
    no_context_wins = runs.assign(
        final_score=runs["final_score"].where(runs["method"] != "tinyattn_self", 90.0)
    )
    short = confirm_report.claim_status(plan, "C3", no_context_wins, done=325, planned=325)
    assert short == (
        "fails in the confirmatory round, on 65 pairs: context behind, attention_vs_bottleneck ahead"
    )
    table = confirm_report.family_table(
        plan, "C3", confirm.verdicts(plan, no_context_wins, True)["C3"]
    )
    context = "context: tinyattn_e1 − tinyattn_self"
    assert list(table.index) == [
        context,
        "attention_vs_bottleneck: tinyattn_e1 − bottleneck_matched",
    ]
    assert table.loc[context, "outcome"] == "behind"
    assert table.loc[context, "reading"] == "refutes"
    assert table.loc[context, confirm_report.ESTIMATE].endswith("; Holm p 0.000")
    assert table.iloc[1]["another test differs"] == "no"


def test_averaging_pairs_compare_two_scores_of_the_same_runs(plan):
    runs = pd.DataFrame(
        {
            "method": ["tinyattn_e4_seq"] * 2 + ["tinyattn_e1"] * 2,
            "task": ["sst2", "mrpc"] * 2,
            "seed": [101, 101, 101, 101],
            "final_score": [85.0, 80.0, 84.0, 78.0],
            "final_unaveraged_score": [85.5, 79.0, np.nan, np.nan],
        }
    )
    averaging = next(c for c in plan.comparisons if c.name == "averaging")
    experts = next(c for c in plan.comparisons if c.name == "experts")
    got = confirm.pair_table(runs, averaging).set_index("task")["difference"]
    assert got.to_dict() == {"mrpc": 1.0, "sst2": -0.5}
    got = confirm.pair_table(runs, experts).set_index("task")["difference"]
    assert got.to_dict() == {"mrpc": 2.0, "sst2": 1.0}


def test_claim_readings(plan):
    def table(outcomes, within=None):
        names = [c.name for c in plan.family("C2")]
        return pd.DataFrame(
            {"comparison": names, "outcome": outcomes, "within_margin": within or [False] * 3}
        )

    assert (
        confirm.claim_reading(plan, "C2", table(["behind", "ahead", "ahead"], [True, False, False]))
        == "holds"
    )
    assert (
        confirm.claim_reading(
            plan, "C2", table(["equivalent", "ahead", "equivalent"], [True, False, False])
        )
        == "fails"
    )
    assert confirm.claim_reading(plan, "C2", table(["behind", "ahead", "ahead"])) == "fails"
    assert (
        confirm.claim_reading(
            plan, "C2", table(["equivalent", "ahead", "undecided"], [True, False, False])
        )
        == "undecided"
    )


def test_the_plan_keeps_the_cpu_studys_budgets():
    """Same tasks, epochs, caps and training defaults as `cpu`, except the end-of-training weights;
    the compute-matched control trains twice the epochs."""
    cpu, plan = load_profile("cpu"), load_profile("confirm")
    assert list(plan["tasks"]) == list(cpu["tasks"])
    for task, budget in plan["tasks"].items():
        own = {k: v for k, v in budget.items() if k != "methods"}
        assert own == cpu["tasks"][task]
        assert budget["methods"]["tinyattn_e1_2x"] == {"epochs": 2 * own["epochs"]}
    assert {**plan["defaults"], "restore_best": True} == {**cpu["defaults"], "restore_best": True}


def test_the_mean_form_is_read_by_the_plan_s_rule_from_a_study_of_it(plan):
    """The GLUE study's mean form: experts minus reference per (task, seed), and the averaging cost
    per analysed experts run from its reports (two-stage only), judged by the plan's rule."""
    roles = {"experts": "e4", "reference": "e1"}
    rows, variants = [], []
    for t, task in enumerate(["cola", "mrpc", "sst2"]):
        for seed in (13, 42, 87):
            gain = 1.0 + 0.1 * t + 0.05 * (seed % 3)
            rows += [
                {"run_id": f"{task}-e4-{seed}", "task": task, "seed": seed, "method": "e4"}
                | {"final_score": 70.0 + gain},
                {"run_id": f"{task}-e1-{seed}", "task": task, "seed": seed, "method": "e1"}
                | {"final_score": 70.0},
            ]
            for variant, score in (("averaged", 70.0 + gain - 0.1), ("trained_form", 70.0 + gain)):
                variants.append(
                    {"run_id": f"{task}-e4-{seed}", "task": task, "init": "two-stage"}
                    | {"variant": variant, "score": score}
                )
    variants.append(  # another form's report is not the mean form's
        {"run_id": "cola-e4-13", "task": "cola", "init": "independent", "variant": "averaged"}
        | {"score": 0.0}
    )
    runs = pd.DataFrame(rows)
    analysed = runs[runs["method"] == "e4"][["run_id", "task", "seed"]]
    found = confirm.mean_form_pairs(runs, roles, pd.DataFrame(variants), analysed, plan)
    assert set(found) == {"averaging", "experts"}  # no compute-matched control in such a study
    assert len(found["averaging"]) == len(found["experts"]) == 9
    assert found["averaging"]["difference"].to_numpy() == pytest.approx([-0.1] * 9)
    assert found["experts"]["difference"].min() == pytest.approx(1.0)
    assert confirm.mean_form_pairs(runs, roles, pd.DataFrame(variants), analysed[:0], plan)[
        "averaging"
    ].empty  # only the analysed runs' reports count
    sources = {"averaging": "last step", "experts": "end of training"}
    table = confirm.mean_form_verdicts(plan, found, sources).set_index("comparison")
    assert table.loc["averaging", "outcome"] == "behind" and table.loc["averaging", "within_margin"]
    assert table.loc["averaging", "reading"] == "supports"  # a cost shown to lie within the margin
    assert (table.loc["experts", "outcome"], table.loc["experts", "reading"]) == (
        "ahead",
        "supports",
    )
    parts = confirm_report.parts_table(
        plan, {"mean": ("study", table.reset_index()), "sequential": ("round", None)}
    ).set_index(["part", "form"])
    assert len(parts) == 2 * len(plan.family("C2"))
    assert parts.loc[(confirm_report.PARTS["averaging"], "mean"), "outcome"] == (
        "behind (within the margin)"
    )
    assert parts.loc[(confirm_report.PARTS["experts_vs_compute"], "mean"), "outcome"] == (
        "not trained there"
    )
    assert parts.loc[(confirm_report.PARTS["averaging"], "mean"), "from"] == "last step"
    assert parts.loc[(confirm_report.PARTS["experts_vs_compute"], "mean"), "from"] == "study"
    assert set(parts.xs("sequential", level="form")["outcome"]) == {"read once the grid is done"}
