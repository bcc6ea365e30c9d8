"""The claim chapters' tables and sentences (``tinyattn.analysis.claims``), on comparisons made from scores."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest

from tinyattn.analysis import claims, decidability, stats, verdicts
from tinyattn.analysis.aggregate import paired_comparison

matplotlib.use("Agg")

AHEAD = [1.0, 1.5, 0.8, 1.2, 2.0, 1.1, 0.9, 1.3, 1.7, 1.4]  # the reference wins every pair
BEHIND = [-v for v in AHEAD]
MIXED = [1.0, -1.2, 0.5, -0.4, 0.9, -0.8, 0.3, -0.6, 0.7, -0.2]
# one diverged run of the other method pulls the mean up; the other method wins eight pairs of ten
DIVERGED = [40.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, 0.5]


def runs(reference: str = "ref", **offsets: list[float]) -> pd.DataFrame:
    rows = [{"task": f"t{i % 2}", "seed": i, "method": reference, "score": 80.0} for i in range(10)]
    for method, values in offsets.items():
        rows += [
            {"task": f"t{i % 2}", "seed": i, "method": method, "score": 80.0 - v}
            for i, v in enumerate(values)
        ]
    return pd.DataFrame(rows)


def comparison(reference: str = "ref", **offsets) -> pd.DataFrame:
    return paired_comparison(runs(reference, **offsets), reference, "score", resamples=2000)


def test_comparison_display_is_narrow_and_names_its_p():
    family = verdicts.c1_family(comparison(a=AHEAD, b=BEHIND))
    shown = claims.comparison_display(family)
    assert list(shown.columns) == [
        "pairs",
        "mean (95 % interval)",
        "median",
        "won–lost",
        "Holm p",
        "outcome",
    ]
    assert shown.loc["b", "won–lost"] == "0–10" and shown.loc["b", "Holm p"] == "0.004"
    assert shown.loc["b", "mean (95 % interval)"].startswith("-1.29 (")
    plain = claims.comparison_display(comparison(a=AHEAD))
    assert "sign-test p" in plain.columns and "outcome" not in plain.columns


def test_c1_opening_names_the_methods_ahead_and_the_widest_gap():
    family = verdicts.c1_family(comparison(a=AHEAD, b=BEHIND, c=[2 * v for v in BEHIND]))
    text = claims.c1_opening(family, "C1 does not hold on MiniLM-L6", "ref")
    assert text.startswith(
        "C1 does not hold on MiniLM-L6: 2 of the 3 other methods beat tiny attention (`ref`) "
        "resolvably (`c`, `b`); `c` by the most, 2.6 points (95 % interval"
    )
    assert text.endswith("over 10 (task, seed) pairs, ahead in 10 of 10.")
    none_ahead = claims.c1_opening(verdicts.c1_family(comparison(a=MIXED)), "C1 x", "ref")
    assert none_ahead.startswith("C1 x: no method is resolvably ahead of tiny attention (`ref`)")


def test_c1_change_says_which_methods_left_and_why():
    table = comparison("tinyattn_e4", tinyattn_e1=BEHIND, a=BEHIND, d=DIVERGED[::-1])
    family = verdicts.c1_family(table)
    text = claims.c1_change(table, family, "tinyattn_e4")
    assert "`tinyattn_e1`, `a` were resolvably ahead" in text
    assert (
        "`tinyattn_e1` no longer counts: it is a tiny-attention variant, judged under C2." in text
    )
    assert text.endswith("The verdict is unchanged.")


def test_disagreements_name_the_comparisons_where_mean_and_sign_test_part():
    family = verdicts.c1_family(comparison(a=AHEAD, d=DIVERGED))
    row = family.set_index("method").loc["d"]
    assert row["mean_difference"] > 0 and row["wins"] < row["losses"]
    text = claims.disagreements(family)
    assert text.startswith("`d`: mean +3.25 points") and "ahead in 2 of 10 pairs" in text
    assert "`a`" not in text
    assert claims.disagreements(verdicts.c1_family(comparison(a=AHEAD))) == ""


def deployment(loss: list[float]) -> pd.DataFrame:
    rows = [{"task": "t", "seed": i, "method": "trained_form", "score": 85.0} for i in range(6)]
    rows += [
        {"task": "t", "seed": i, "method": "averaged", "score": 85.0 - v}
        for i, v in enumerate(loss)
    ]
    return paired_comparison(pd.DataFrame(rows), "trained_form", "score", resamples=2000)


def test_c2_opening_and_the_forms_sentence():
    loss = deployment([0.3, 0.4, 0.35, 0.3, 0.45, 0.4])
    text = claims.c2_opening("**C2 does not hold on MiniLM-L6**: ...", loss)
    assert text.startswith(
        "In the exploratory grids, C2 does not hold on MiniLM-L6: averaging the four experts' weights"
    )
    assert "costs +0.37 points" in text and "over 6 analysed runs" in text
    early = claims.c2_opening(verdicts.PROVISIONAL + " **C2 holds on MiniLM-L6**: ...", loss)
    assert early.startswith("In the exploratory grids (provisional), C2 holds on MiniLM-L6: ")
    kept = "**C2 holds only in part on MiniLM-L6**: ..."
    lost = "**C2 does not hold on MiniLM-L6**: ..."
    same = claims.forms_sentence(
        {"mean": loss, "sequential": loss}, {"mean": lost, "sequential": lost}
    )
    assert same.endswith("does not change C2's verdict.")
    other = claims.forms_sentence(
        {"mean": loss, "sequential": deployment([0.1] * 6)}, {"mean": lost, "sequential": kept}
    )
    assert "sequential form: **C2 holds only in part on MiniLM-L6**" in other
    assert "(95 % interval +0.10 to +0.1000, 6 runs)" in other  # upper ends to four decimals
    gap = 0.5 - loss.set_index("method").loc["averaged", "ci_high"]
    assert other.endswith(
        "The combination form changes C2's verdict: the upper ends of the two intervals lie "
        f"0.4000 under and {gap:.4f} under the 0.5-point margin."
    )
    overlapping = claims.forms_sentence(
        {"mean": deployment([0.3, 0.6, 0.2, 0.7, 0.4, 0.5]), "sequential": loss},
        {"mean": lost, "sequential": kept},
    )
    assert overlapping.endswith("what averaging is shown to cost.")
    assert " over " in overlapping and " under " in overlapping
    missing = claims.forms_sentence({"mean": loss, "sequential": pd.DataFrame()}, {})
    assert missing.startswith("The sequential form has no analysed run yet")


def test_c2_rules_table_and_change():
    earlier = {"point estimate": "C2 holds only in part", "interval": "C2 does not hold"}
    table = claims.c2_rules_table(earlier, "**C2 does not hold**: ...")
    assert list(table.index) == ["fixed at", "seen by then", "verdict on these records"]
    assert list(table.loc["verdict on these records"]) == [
        "C2 holds only in part",
        "C2 does not hold",
        "C2 does not hold",
    ]
    assert table.loc["fixed at", "point estimate rule"].startswith("9fb0df7")
    assert "**C2 holds only in part**" in claims.c2_change(earlier, "**C2 does not hold**")
    same = claims.c2_change(dict.fromkeys(earlier, "C2 x"), "**C2 x**")
    assert same == "All three rules give the same verdict on these records: **C2 x**."


def test_per_task_display_puts_each_interval_below_its_mean():
    table = pd.DataFrame({"rte": ["+1.2 (-1.0, 3.5)", "+2.0"], "sst2": [None, "-0.5 (-0.8, -0.2)"]})
    html = claims.per_task_display(table.set_axis(["a", "b"])).to_html()
    assert "+1.2<br>(-1.0, 3.5)" in html and "-0.5<br>(-0.8, -0.2)" in html
    assert ">+2.0<" in html and ">—<" in html  # no interval: the mean alone; no pair: a dash
    assert "(-1.0,<br>" not in html


def test_wrapped_lets_long_cells_wrap_and_keeps_the_table():
    table = pd.DataFrame({"rule": ["a long sentence that must wrap"]}, index=["seen by then"])
    styled = claims.wrapped(table)
    assert styled.data is table
    html = styled.to_html()
    assert "white-space: normal" in html and "a long sentence that must wrap" in html


def test_the_sign_test_floor_in_a_family_counts_the_comparisons_that_cannot_go_first():
    """Two 6-pair comparisons beside one of 15 pairs: the clearer 15-pair one can take Holm's first
    step, so the 6-pair ones reach 2 x 2/64 = 0.0625 at best, not 3 x 2/64 = 0.094."""
    assert decidability.family_sign_floor(6, [6, 6, 15]) == pytest.approx(2 * 2 / 64)
    assert decidability.family_sign_floor(6, [6, 6, 6]) == pytest.approx(3 * 2 / 64)
    assert decidability.family_sign_floor(15, [6, 6, 15]) == pytest.approx(3 * 2 / 2**15)  # first
    assert decidability.family_sign_floor(1, [1, 3]) == 1.0


def test_sign_test_floor():
    assert decidability.sign_floor(6, 3) == pytest.approx((2 / 64, 6 / 64))
    assert decidability.sign_floor(1, 2) == (1.0, 1.0)
    all_won = stats.sign_test([1.0] * 6)["sign_p"]
    assert all_won == pytest.approx(decidability.sign_floor(6, 1)[0])


def test_forest_plot_draws_one_panel_per_method():
    from tinyattn.analysis.plots import forest_plot

    data = runs(a=AHEAD, b=DIVERGED)
    per_task = stats.per_task_differences(data, "ref")
    family = verdicts.c1_family(paired_comparison(data, "ref", "score", resamples=500))
    fig = forest_plot(per_task, family, ["b", "a"], clip=5.0, columns=2)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["b", "a"]
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["t0", "t1", "pooled"]
    assert fig.axes[0].get_xlim() == pytest.approx((-5.5, 5.5))


def test_reference_collapsed_names_its_runs_and_the_tasks_that_drop_out():
    data = pd.DataFrame(
        {
            "task": ["rte", "rte", "mrpc", "mrpc", "rte"],
            "seed": [1, 2, 1, 2, 1],
            "method": ["ref", "ref", "ref", "ref", "other"],
        }
    )
    flags = pd.Series([True, True, True, False, True])
    text = claims.reference_collapsed(data, flags, "ref")
    assert text == (
        "3 of them are tiny attention's own (`ref`): mrpc (seed 1); rte (seed 1, 2). Without "
        "collapsed runs, rte therefore drops out of every comparison."
    )
    none = claims.reference_collapsed(data, pd.Series([False] * 4 + [True]), "ref")
    assert none == "None of them is tiny attention's own (`ref`)."


def test_forms_rules_table_judges_each_form_under_each_rule():
    experts = comparison("tinyattn_e4", tinyattn_e1=AHEAD[:6], tinyattn_e1_2x=AHEAD[:6])
    losses = {
        "mean": deployment([0.1] * 6),
        "sequential": deployment([0.3, 0.4, 0.6, 0.7] * 1 + [0.3, 0.3]),
    }
    roles = {"reference": "tinyattn_e1", "compute_control": "tinyattn_e1_2x"}
    heads = {form: verdicts.c2(experts, losses[form], True, roles=roles) for form in losses}
    table = claims.forms_rules_table({f: experts for f in losses}, losses, heads, roles)
    assert list(table.index) == ["point estimate rule", "interval rule", "current rule"]
    assert list(table.columns) == ["mean form", "sequential form"]
    # six pairs all won: the intervals say the experts help, the declared analysis cannot
    assert table["mean form"].tolist() == [
        "C2 holds on MiniLM-L6",
        "C2 holds on MiniLM-L6",
        "C2 holds only in part on MiniLM-L6",
    ]
    assert table.loc["point estimate rule", "sequential form"] == "C2 holds on MiniLM-L6"
    assert table.loc["interval rule", "sequential form"] == "C2 does not hold on MiniLM-L6"


def test_what_the_reruns_changed_in_the_collapse_flags():
    nan = float("nan")
    runs = pd.DataFrame(
        {
            "task": ["rte"] * 4,
            "method": ["a", "a", "b", "b"],
            "seed": [1, 2, 1, 2],
            "final_score": [52.0, 53.0, 60.0, 53.0],  # majority 52.7: three flagged by score
            "final_top_share": [0.99, 0.70, 0.97, nan],
            "final_prediction_std": [nan] * 4,
            "behaviour_source": ["rerun", "rerun", "rerun", "rerun differs"],
        }
    )
    text = claims.rederived_text(runs, {"rte": 52.7})
    assert text.startswith("4 runs were rerun") and "3 of them repeat" in text
    assert "(1 do not, and stay judged by score)" in text
    assert "1 collapsed by both rules, 1 that the score flagged did not" in text
    assert "and 1 that the score left did." in text
    assert claims.rederived_text(runs.drop(columns="behaviour_source"), {"rte": 52.7}).startswith(
        "No run"
    )
