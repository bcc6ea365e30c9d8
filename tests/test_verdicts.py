"""Every outcome of the verdict rules: C1, C2 and C3 on paired comparisons made from scores, the
task-by-task standing, and the efficiency targets on measured ratios."""

from __future__ import annotations

import pandas as pd
import pytest

from tinyattn.analysis import fewshot, stats, verdicts
from tinyattn.analysis.aggregate import paired_comparison, task_standing
from tinyattn.analysis.experts import deployment_comparison

#: The ablations profile's roles, as the tests' labels give them.
ROLES = {
    "reference": "tinyattn_e1",
    "experts": "tinyattn_e4",
    "compute_control": "tinyattn_e1_2x",
    "no_context": "tinyattn_self",
    "same_size_bottleneck": "bottleneck_matched",
    "larger_bottleneck": "bottleneck_10x",
}


def comparison(reference: str = "ref", **offsets: list[float]) -> pd.DataFrame:
    """A paired comparison from real scores: the reference scores 80 on ten (task, seed) pairs and
    each other method 80 minus its offsets (a positive offset: the reference is ahead)."""
    rows = [{"task": f"t{i % 2}", "seed": i, "method": reference, "score": 80.0} for i in range(10)]
    for method, values in offsets.items():
        rows += [
            {"task": f"t{i % 2}", "seed": i, "method": method, "score": 80.0 - v}
            for i, v in enumerate(values)
        ]
    return paired_comparison(pd.DataFrame(rows), reference, "score", resamples=2000)


AHEAD = [1.0, 1.5, 0.8, 1.2, 2.0, 1.1, 0.9, 1.3, 1.7, 1.4]  # the reference wins every pair
BEHIND = [-v for v in AHEAD]
MIXED = [1.0, -1.2, 0.5, -0.4, 0.9, -0.8, 0.3, -0.6, 0.7, -0.2]  # no resolved difference
# a few large wins and many small losses: the interval excludes zero, the sign test does not agree
LOPSIDED = [5.0, 5.0, 5.0, 5.0, 5.0, -0.1, -0.1, -0.1, -0.1, -0.1]


@pytest.mark.parametrize(
    "offsets, complete, head",
    [
        ({"a": AHEAD, "b": AHEAD}, True, "C1 holds on MiniLM-L6"),
        ({"a": AHEAD, "b": BEHIND}, True, "C1 does not hold on MiniLM-L6"),
        ({"a": AHEAD, "b": MIXED}, True, "C1 is not established on MiniLM-L6"),
        ({"a": AHEAD, "b": AHEAD[:1]}, True, "C1 is not established on MiniLM-L6"),
        ({"a": AHEAD, "b": LOPSIDED}, True, "C1 is not established on MiniLM-L6"),
        ({"a": AHEAD, "b": BEHIND}, False, "Provisional"),
    ],
)
def test_c1(offsets, complete, head):
    text = verdicts.c1(comparison(**offsets), "ref", complete)
    assert text.startswith("**" + head)
    if not complete:  # judged on the finished runs, and marked as such
        assert "**C1 does not hold on MiniLM-L6**" in text
    if head == "C1 does not hold on MiniLM-L6":
        assert "- resolvably worse than: `b` (-1.29 points, 95 % interval" in text
        assert "ahead in 0 of 10 pairs, Holm p = 0.004" in text  # 2 / 2^10, twice
        assert "resolvably better than: `a`" in text


def test_c1_judges_tiny_attention_against_the_other_methods_only():
    # E = 1 beating E = 4 is C2's business: C1 still holds against every other method
    table = comparison("tinyattn_e4", tinyattn_e1=BEHIND, a=AHEAD, b=AHEAD)
    family = verdicts.c1_family(table)
    assert list(family["method"]) == ["a", "b"]
    assert family["holm_p"].tolist() == pytest.approx([2 * 2 / 2**10] * 2)  # Holm over two
    assert verdicts.c1(table, "tinyattn_e4", True).startswith("**C1 holds on MiniLM-L6")


def test_c1_says_whether_the_collapsed_runs_change_it():
    every = comparison(a=AHEAD, b=BEHIND)
    same = verdicts.c1(every, "ref", True, without_collapsed=every)
    assert same.splitlines()[-1] == (
        "- without the pairs that hold a collapsed run: resolvably worse than `b`; the verdict is "
        "the same"
    )
    changed = verdicts.c1(every, "ref", True, without_collapsed=comparison(a=AHEAD, b=MIXED))
    assert changed.splitlines()[-1] == (
        "- without the pairs that hold a collapsed run: resolvably worse than none; the verdict "
        "would be that C1 is not established"
    )
    assert changed.startswith("**C1 does not hold")  # the verdict itself is judged on all runs


def test_outcome_is_the_declared_rule_interval_and_holm():
    table = comparison(a=AHEAD, b=BEHIND, c=MIXED, d=AHEAD[:1], e=LOPSIDED)
    family = stats.within_family(table, list("abcde")).set_index("method")
    assert [verdicts.outcome(family.loc[m]) for m in "abcde"] == [
        "better",
        "worse",
        "not resolved",
        "too few pairs",
        "not resolved",  # its interval alone excludes zero
    ]
    assert family.loc["e", "ci_low"] > 0 and family.loc["e", "holm_p"] > stats.ALPHA
    row = {"ci_low": 0.5, "ci_high": 1.0, "holm_p": 0.2}
    assert verdicts.outcome(row) == stats.outcome(row) == "not resolved"


def deployments(loss: list[float]) -> pd.DataFrame:
    """Reports' variants for six runs: the trained form at 85, the averaged model ``loss`` below it."""
    rows = []
    for i, value in enumerate(loss):
        for variant, score in (("trained_form", 85.0), ("averaged", 85.0 - value)):
            rows.append({"run_id": f"r{i}", "task": "sst2", "init": "two-stage"})
            rows[-1] |= {"variant": variant, "score": score}
    return deployment_comparison(pd.DataFrame(rows))


@pytest.mark.parametrize(
    "loss, experts, head",
    [
        (
            [0.1, 0.2, 0.0, 0.1, 0.15, 0.05],
            {"tinyattn_e1": AHEAD, "tinyattn_e1_2x": AHEAD},
            "holds on",
        ),
        (
            [0.1, 0.2, 0.0, 0.1, 0.15, 0.05],
            {"tinyattn_e1": AHEAD, "tinyattn_e1_2x": MIXED},
            "holds only in part",
        ),
        (
            [0.5, 0.8, 0.6, 0.7, 0.5, 0.6],
            {"tinyattn_e1": AHEAD, "tinyattn_e1_2x": AHEAD},
            "does not hold",
        ),
        ([0.9, -0.8, 0.1, 1.2, -0.5, 0.4], {"tinyattn_e1": AHEAD}, "is not established"),
    ],
)
def test_c2(loss, experts, head):
    text = verdicts.c2(
        comparison("tinyattn_e4", **experts), deployments(loss), True, speed=3.0, roles=ROLES
    )
    assert text.startswith(f"**C2 {head}")
    assert "the average serves 3.00x as fast" in text


def test_c2_family_adds_the_glue_study_and_holm_runs_over_all_three():
    ablations = comparison("tinyattn_e4", tinyattn_e1=AHEAD, tinyattn_e1_2x=AHEAD)
    glue = comparison("tinyattn_e4", tinyattn_e1=MIXED, lora=BEHIND)
    family = verdicts.c2_family(ablations, glue, roles=ROLES).set_index("method")
    assert list(family.index) == ["tinyattn_e1", "tinyattn_e1_2x", verdicts.glue_reference(ROLES)]
    assert family.loc["tinyattn_e1", "holm_p"] == pytest.approx(3 * 2 / 2**10)
    text = verdicts.c2(ablations, deployments([0.1] * 6), True, glue_experts=glue, roles=ROLES)
    # averaging keeps the accuracy, but four experts do not resolvably beat one in the GLUE study
    assert text.startswith("**C2 holds only in part")
    assert "- in the GLUE study (five tasks), four averaged experts minus one expert: " in text
    assert verdicts.c2(ablations, deployments([0.1] * 6), True, roles=ROLES).startswith(
        "**C2 holds on"
    )


def test_six_pairs_never_resolve_under_holm():
    # the smallest two-sided sign-test p over six pairs is 2 / 2^6 = 0.031; Holm over two doubles it
    six = comparison("tinyattn_e4", tinyattn_e1=AHEAD[:6], tinyattn_e1_2x=AHEAD[:6])
    family = verdicts.c2_family(six, roles=ROLES).set_index("method")
    assert (family["ci_low"] > 0).all() and (family["holm_p"] > stats.ALPHA).all()
    assert (family["outcome"] == "not resolved").all()


@pytest.mark.parametrize(
    "loss, e1_2x, point, interval",
    [
        # a mean loss of 0.3 whose interval reaches past half a point: the two rules disagree
        ([0.0, 0.7, 0.05, 0.6, 0.1, 0.35], MIXED, "holds only in part", "does not hold"),
        ([0.1, 0.2, 0.0, 0.1, 0.15, 0.05], AHEAD, "holds on", "holds on"),
        ([0.5, 0.8, 0.6, 0.7, 0.5, 0.6], AHEAD, "does not hold", "does not hold"),
    ],
)
def test_c2_point_estimate_rule_beside_the_interval_rule(loss, e1_2x, point, interval):
    experts = comparison("tinyattn_e4", tinyattn_e1=AHEAD, tinyattn_e1_2x=e1_2x)
    earlier = verdicts.c2_earlier_rules(experts, deployments(loss), roles=ROLES)
    assert earlier["point estimate"].startswith(f"C2 {point}")
    assert earlier["interval"].startswith(f"C2 {interval}")
    assert verdicts.c2(experts, deployments(loss), True, roles=ROLES).startswith(f"**C2 {interval}")
    assert (
        verdicts.c2_earlier_rules(experts, pd.DataFrame(), roles=ROLES)["interval"]
        == "No verdict yet"
    )


def test_the_interval_rule_without_holm_can_differ_from_the_declared_analysis():
    # six pairs all won: the intervals exclude zero, but Holm lifts the sign test above 0.05
    six = comparison("tinyattn_e4", tinyattn_e1=AHEAD[:6], tinyattn_e1_2x=AHEAD[:6])
    kept = deployments([0.1] * 6)
    assert verdicts.c2_earlier_rules(six, kept, roles=ROLES)["interval"] == "C2 holds on MiniLM-L6"
    assert verdicts.c2(six, kept, True, roles=ROLES).startswith("**C2 holds only in part")


def test_c2_rules_name_their_commits():
    assert list(verdicts.C2_RULES) == ["point estimate", "interval"]
    assert all(len(rule["commit"]) == 7 for rule in verdicts.C2_RULES.values())


def test_averaging_rule_uses_the_interval_not_the_mean():
    # a mean loss of 0.3 whose interval reaches past half a point is not "kept"
    wide = deployments([0.0, 0.7, 0.05, 0.6, 0.1, 0.35]).set_index("method").loc["averaged"]
    assert wide["mean_difference"] < verdicts.KEEP_MARGIN < wide["ci_high"]
    assert verdicts.averaging(wide) == "loses"
    narrow = deployments([0.3] * 6).set_index("method").loc["averaged"]
    assert verdicts.averaging(narrow) == "keeps"


def test_c2_waits_for_a_deployment_comparison():
    text = verdicts.c2(
        comparison("tinyattn_e4", tinyattn_e1=AHEAD), pd.DataFrame(), True, roles=ROLES
    )
    assert text.startswith("**No verdict yet.**")


@pytest.mark.parametrize(
    "self_, matched, tenfold, head",
    [
        (AHEAD, AHEAD, MIXED, "C3 holds on MiniLM-L6"),
        (AHEAD, AHEAD, BEHIND, "C3 holds only in its weak form"),
        (BEHIND, AHEAD, AHEAD, "C3 does not hold"),
        (AHEAD, BEHIND, AHEAD, "C3 does not hold"),
        (MIXED, AHEAD, AHEAD, "C3 is not established"),
    ],
)
def test_c3(self_, matched, tenfold, head):
    table = comparison(
        "tinyattn_e1", tinyattn_self=self_, bottleneck_matched=matched, bottleneck_10x=tenfold
    )
    assert verdicts.c3(table, True, roles=ROLES).startswith("**" + head)
    assert verdicts.c3(table, False, roles=ROLES).startswith("**Provisional**")


def test_c3_not_established_says_whether_anything_favours_context():
    none_ahead = comparison(
        "tinyattn_e1", tinyattn_self=MIXED, bottleneck_matched=MIXED, bottleneck_10x=BEHIND
    )
    text = verdicts.c3(none_ahead, True, roles=ROLES)
    assert "Nothing here shows context helping" in text
    assert "ten times the parameters are resolvably better" in text
    # each line gives the sign test beside the interval, with Holm's p over C3's three comparisons
    assert "ahead in 0 of 10 pairs, Holm p = 0.006)" in text.splitlines()[-1]
    assert verdicts.headline(text) == "C3 is not established on MiniLM-L6"
    one_ahead = comparison(
        "tinyattn_e1", tinyattn_self=AHEAD, bottleneck_matched=MIXED, bottleneck_10x=BEHIND
    )
    assert "Nothing here" not in verdicts.c3(one_ahead, True, roles=ROLES)
    tenfold_unresolved = comparison(
        "tinyattn_e1", tinyattn_self=MIXED, bottleneck_matched=MIXED, bottleneck_10x=MIXED
    )
    text = verdicts.c3(tenfold_unresolved, True, roles=ROLES)
    assert "Nothing here" in text and "ten times" not in text.split("\n")[0]


def test_c3_names_the_missing_comparisons():
    text = verdicts.c3(comparison("tinyattn_e1", tinyattn_self=AHEAD), True, roles=ROLES)
    assert text.startswith("**No verdict yet.**") and "`bottleneck_matched`" in text


def test_headline_gives_the_gist_and_keeps_the_provisional_mark():
    final = verdicts.c1(comparison(a=AHEAD, b=BEHIND), "ref", complete=True)
    running = verdicts.c1(comparison(a=AHEAD, b=BEHIND), "ref", complete=False)
    assert verdicts.headline(final) == "C1 does not hold on MiniLM-L6"
    assert verdicts.headline(running) == "provisional: C1 does not hold on MiniLM-L6"
    empty = pd.DataFrame(columns=["method", "mean_difference", "ci_low", "ci_high"])
    assert verdicts.headline(verdicts.c3(empty, complete=False, roles=ROLES)) == "No verdict yet"
    assert verdicts.headline("plain text\nmore") == "plain text"


def test_c1_waits_for_a_comparison():
    assert verdicts.c1(pd.DataFrame(), "ref", True).startswith("**No verdict yet.**")


def test_c2_names_independent_experts_and_waits_for_expert_runs():
    four_vs_one = comparison("tinyattn_e4", tinyattn_e1=AHEAD)
    kept = deployments([0.1, 0.2, 0.0, 0.1, 0.15, 0.05])
    independent = deployments([30.0] * 6)  # averaging independent experts loses 30 points
    text = verdicts.c2(four_vs_one, kept, True, independent=independent, roles=ROLES)
    assert "- independently initialised experts, as trained minus averaged: +30.00 points" in text
    assert verdicts.c2(pd.DataFrame(), kept, True, roles=ROLES).startswith("**No verdict yet.**")


def standing_table(*rows: tuple[str, int, str, float]) -> pd.DataFrame:
    """A ``task_standing`` table: (task, rank, best method, gap to the best) per task, 11 methods."""
    table = pd.DataFrame(rows, columns=["task", "rank", "best", "gap_to_best"]).set_index("task")
    return table.assign(methods=11)


def test_standing_names_best_and_worst_tasks_and_the_widest_gap():
    assert verdicts.standing(pd.DataFrame()) == "No task has a finished run of the reference yet."
    everywhere = standing_table(("rte", 1, "tinyattn_e4", 0.0), ("sst2", 1, "tinyattn_e4", 0.0))
    assert verdicts.standing(everywhere) == "Tiny attention is the best method on every task."
    mixed = standing_table(
        ("rte", 1, "tinyattn_e4", 0.0),
        ("mrpc", 7, "full_ft", 2.34),
        ("sst2", 4, "lora", 0.5),
        ("cola", 7, "lora", 1.0),
    )
    assert verdicts.standing(mixed) == (
        "Tiny attention is the best method on rte. Its rank runs from 1 (rte) to 7 (mrpc, cola) "
        "of up to 11 methods; its largest gap to the best method is 2.3 points, behind full_ft "
        "on mrpc."
    )
    nowhere = standing_table(("rte", 2, "lora", 0.25), ("sst2", 3, "bitfit", 0.5))
    assert verdicts.standing(nowhere) == (
        "Its rank runs from 2 (rte) to 3 (sst2) of up to 11 methods; its largest gap to the best "
        "method is 0.5 points, behind bitfit on sst2."
    )


def test_standing_reads_the_aggregated_table():
    rows = [("t1", "ref", 80.0), ("t1", "a", 70.0), ("t2", "ref", 60.0), ("t2", "a", 65.0)]
    summary = pd.DataFrame(rows, columns=["task", "method", "mean"])
    table = task_standing(summary, "ref").set_index("task")
    assert verdicts.standing(table) == (
        "Tiny attention is the best method on t1. Its rank runs from 1 (t1) to 2 (t2) of up to 2 "
        "methods; its largest gap to the best method is 5.0 points, behind a on t2."
    )


def ratio(q1: float, median: float, q3: float) -> dict:
    return {"q1": q1, "median": median, "q3": q3}


@pytest.mark.parametrize(
    "measured, verdict",
    [
        (ratio(0.98, 1.01, 1.03), "is met"),  # the upper quartile on the target counts as met
        (ratio(1.031, 1.04, 1.05), "is missed"),
        (ratio(1.01, 1.03, 1.05), "cannot be resolved by this measurement"),
        (ratio(1.00, 1.01, 1.031), "cannot be resolved by this measurement"),
    ],
)
def test_ratio_target_is_decided_by_the_quartiles(measured, verdict):
    assert verdicts.ratio_target(measured, 1.03).startswith(verdict)


def test_memory_target_needs_every_configuration_within_lora():
    assert verdicts.memory_target([367.6, 380.0], 399.9) == "is met"
    assert verdicts.memory_target([399.9, 380.0], 399.9) == "is met"
    assert verdicts.memory_target([367.6, 400.0], 399.9) == "is missed"


def test_within_spread_compares_quartile_ranges():
    assert verdicts.within_spread(ratio(1.0, 1.1, 1.2), ratio(1.15, 1.3, 1.4)) == "within"
    assert verdicts.within_spread(ratio(1.15, 1.3, 1.4), ratio(1.0, 1.1, 1.2)) == "within"
    assert verdicts.within_spread(ratio(1.0, 1.05, 1.1), ratio(1.2, 1.3, 1.4)) == "beyond"


def test_ranges_apart_needs_every_process_faster():
    before = pd.Series([1.30, 1.45, 1.38])
    assert verdicts.ranges_apart(before, pd.Series([1.10, 1.25])) == "ranges that do not overlap"
    assert verdicts.ranges_apart(before, pd.Series([1.10, 1.30])).startswith("ranges that overlap")


# ----------------------------------------------------------------------------- C4
def _few_runs(scores: dict[str, list[float]], method: str = "tinyattn_e1") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"task": task, "method": method, "seed": seed, "score": score}
            for task, values in scores.items()
            for seed, score in enumerate(values)
        ]
    )


# fewshot.floors' shape: chance and the dev set's majority class, on the main metric and as accuracies
C4_BASELINES = {
    "fewrte": {"classes": 2, "chance": 50.0, "chance_accuracy": 50.0}
    | {"dev_majority": 52.7, "dev_majority_share": 52.7},
    "fewcb": {"classes": 3, "chance": 31.8, "chance_accuracy": 33.3}
    | {"dev_majority": 36.1, "dev_majority_share": 50.0},
}
E1 = "tinyattn_e1"  # the label the runs give tiny attention
C4_REFS = {"fewrte": {"GPT-3": 69.0, "PET": 69.8}, "fewcb": {"GPT-3": 63.8, "PET": 72.25}}


def test_c4_without_cloze_runs_cannot_decide_and_names_the_deciding_run():
    offline = _few_runs({"fewrte": [50.0, 46.0, 55.0], "fewcb": [30.0, 10.0]})
    text = fewshot.c4(offline, C4_BASELINES, C4_REFS, cloze=None, method=E1)
    assert text.startswith("**C4 cannot be decided here.**")
    # seeds are counted above chance (50.0), not above the training set's majority class (47.3 on
    # RTE, the val set's minority class), which would count the seed at chance (50.0) too
    assert (
        "fewrte 50.3 ± 4.5 against chance 50.0 and the dev set's majority class 52.7 (above chance "
        "on 1 of 3 seeds)"
    ) in text
    assert (
        "fewcb 20.0 ± 14.1 against chance 31.8 and the dev set's majority class 36.1 (its combined "
        "score; as accuracies 33.3 and 50.0; above chance on 0 of 2 seeds)"
    ) in text
    assert "`tinyattn study --profile fewglue` on a GPU with Hub access" in text
    assert "no finished run yet" in fewshot.c4(offline.iloc[:0], C4_BASELINES, C4_REFS, method=E1)
    unfinished = fewshot.c4(offline, C4_BASELINES, C4_REFS, complete=False, method=E1)
    assert unfinished == text  # without cloze runs, nothing the grid adds could decide it


def test_c4_with_cloze_runs_judges_each_task_against_the_lower_reference():
    offline = _few_runs({"fewrte": [50.0]})
    close = _few_runs({"fewrte": [66.0, 65.0], "fewcb": [60.0, 59.0]})  # bars 69.0 and 63.8
    text = fewshot.c4(offline, C4_BASELINES, C4_REFS, cloze=close, method=E1)
    assert text.startswith("**C4 is supported**")
    assert "fewrte 65.5 ± 0.7 (GPT-3 69.0, PET 69.8)" in text and "validation set" in text
    edge = _few_runs({"fewrte": [64.0], "fewcb": [58.8]})  # exactly 5 points below: still close
    assert fewshot.c4(offline, C4_BASELINES, C4_REFS, cloze=edge, method=E1).startswith(
        "**C4 is supported"
    )
    low = _few_runs({"fewrte": [63.9], "fewcb": [70.0]})
    text = fewshot.c4(offline, C4_BASELINES, C4_REFS, cloze=low, method=E1)
    assert text.startswith("**C4 is not supported**") and "on fewrte 63.9" in text
    partial = fewshot.c4(offline, C4_BASELINES, C4_REFS, cloze=low, complete=False, method=E1)
    assert partial == f"{verdicts.PROVISIONAL} {text}"
    assert "fewcb" not in text.split("below the lower")[1].split(". ")[0]
    one_task = _few_runs({"fewrte": [70.0]})
    text = fewshot.c4(offline, C4_BASELINES, C4_REFS, cloze=one_task, method=E1)
    assert text.startswith("**C4 cannot be decided yet**") and "on fewcb." in text
    other_method = _few_runs({"fewrte": [70.0], "fewcb": [70.0]}, method="lora")
    assert "cannot be decided yet" in fewshot.c4(
        offline, C4_BASELINES, C4_REFS, other_method, method=E1
    )


def test_c4_judges_nothing_against_unchecked_published_rows():
    offline = _few_runs({"fewrte": [50.0]})
    close = _few_runs({"fewrte": [66.0], "fewcb": [60.0]})  # would be "supported" against C4_REFS
    text = fewshot.c4(offline, C4_BASELINES, {}, cloze=close, method=E1)
    assert text.startswith("**C4 cannot be decided yet**") and "not yet checked" in text


def test_code_list_names_each_item_once_in_order():
    assert verdicts.code_list(["a", "b", "a"]) == "`a`, `b`"
    assert verdicts.code_list(pd.Series(["x"])) == "`x`" and verdicts.code_list([]) == "none"


def test_c2_and_c3_read_the_labels_through_the_profiles_roles():
    # the same comparisons under other labels: the verdicts follow the roles, not the names
    renamed = {
        "reference": "one",
        "compute_control": "one_long",
        "no_context": "blind",
        "same_size_bottleneck": "small_bottleneck",
        "larger_bottleneck": "big_bottleneck",
    }
    table = comparison("one", blind=AHEAD, small_bottleneck=AHEAD, big_bottleneck=BEHIND)
    assert verdicts.c3(table, True, roles=renamed).startswith("**C3 holds only in its weak form")
    assert verdicts.c3_labels(renamed) == ["blind", "small_bottleneck", "big_bottleneck"]
    with pytest.raises(KeyError):
        verdicts.c3(table, True, roles={"reference": "one"})  # a profile without C3's roles
    experts = comparison("four", one=AHEAD, one_long=AHEAD)
    family = verdicts.c2_family(experts, roles=renamed)
    assert list(family["method"]) == ["one", "one_long"]
    text = verdicts.c2(experts, deployments([0.1] * 10), True, roles=renamed)
    assert text.startswith("**C2 holds on") and "minus one expert trained as long" in text
