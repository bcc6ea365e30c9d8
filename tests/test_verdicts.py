"""Every outcome of the verdict rules on C1, C2 and C3, on paired comparisons made from scores."""

from __future__ import annotations

import pandas as pd
import pytest

from tinyattn import verdicts
from tinyattn.aggregate import paired_comparison
from tinyattn.experts import deployment_comparison


def comparison(reference: str = "ref", **offsets: list[float]) -> pd.DataFrame:
    """A paired comparison from real scores: the reference scores 80 on six (task, seed) pairs and each
    other method 80 minus its offsets (a positive offset: the reference is ahead)."""
    rows = [{"task": f"t{i % 2}", "seed": i, "method": reference, "score": 80.0} for i in range(6)]
    for method, values in offsets.items():
        rows += [
            {"task": f"t{i % 2}", "seed": i, "method": method, "score": 80.0 - v}
            for i, v in enumerate(values)
        ]
    return paired_comparison(pd.DataFrame(rows), reference, "score", resamples=2000)


AHEAD = [1.0, 1.5, 0.8, 1.2, 2.0, 1.1]  # the reference wins every pair
BEHIND = [-v for v in AHEAD]
MIXED = [1.0, -1.2, 0.5, -0.4, 0.9, -0.8]  # no resolved difference


@pytest.mark.parametrize(
    "offsets, complete, head",
    [
        ({"a": AHEAD, "b": AHEAD}, True, "C1 holds on MiniLM-L6"),
        ({"a": AHEAD, "b": BEHIND}, True, "C1 does not hold on MiniLM-L6"),
        ({"a": AHEAD, "b": MIXED}, True, "C1 is not established on MiniLM-L6"),
        ({"a": AHEAD, "b": AHEAD[:1]}, True, "C1 is not established on MiniLM-L6"),
        ({"a": AHEAD, "b": BEHIND}, False, "Provisional"),
    ],
)
def test_c1(offsets, complete, head):
    text = verdicts.c1(comparison(**offsets), "ref", complete)
    assert text.startswith("**" + head)
    if not complete:  # judged on the finished runs, and marked as such
        assert "**C1 does not hold on MiniLM-L6**" in text
    if head == "C1 does not hold on MiniLM-L6":
        assert (
            "- worse than: `b`" in text
            and "better, with the interval excluding zero, than: `a`" in text
        )


def test_outcome_of_each_row():
    table = comparison(a=AHEAD, b=BEHIND, c=MIXED, d=AHEAD[:1]).set_index("method")
    assert [verdicts.outcome(table.loc[m]) for m in "abcd"] == [
        "better",
        "worse",
        "not resolved",
        "too few pairs",
    ]


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
    text = verdicts.c2(comparison("tinyattn_e4", **experts), deployments(loss), True, speed=3.0)
    assert text.startswith(f"**C2 {head}")
    assert "the average serves 3.00x as fast" in text


def test_averaging_rule_uses_the_interval_not_the_mean():
    # a mean loss of 0.3 whose interval reaches past half a point is not "kept"
    wide = deployments([0.0, 0.7, 0.05, 0.6, 0.1, 0.35]).set_index("method").loc["averaged"]
    assert wide["mean_difference"] < verdicts.KEEP_MARGIN < wide["ci_high"]
    assert verdicts.averaging(wide) == "loses"
    narrow = deployments([0.3] * 6).set_index("method").loc["averaged"]
    assert verdicts.averaging(narrow) == "keeps"


def test_c2_waits_for_a_deployment_comparison():
    text = verdicts.c2(comparison("tinyattn_e4", tinyattn_e1=AHEAD), pd.DataFrame(), True)
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
    assert verdicts.c3(table, True).startswith("**" + head)
    assert verdicts.c3(table, False).startswith("**Provisional**")


def test_c3_not_established_says_whether_anything_favours_context():
    none_ahead = comparison(
        "tinyattn_e1", tinyattn_self=MIXED, bottleneck_matched=MIXED, bottleneck_10x=BEHIND
    )
    text = verdicts.c3(none_ahead, True)
    assert "Nothing here shows context helping" in text
    assert "ten times the parameters are resolvably better" in text
    assert verdicts.headline(text) == "C3 is not established on MiniLM-L6"
    one_ahead = comparison(
        "tinyattn_e1", tinyattn_self=AHEAD, bottleneck_matched=MIXED, bottleneck_10x=BEHIND
    )
    assert "Nothing here" not in verdicts.c3(one_ahead, True)
    tenfold_unresolved = comparison(
        "tinyattn_e1", tinyattn_self=MIXED, bottleneck_matched=MIXED, bottleneck_10x=MIXED
    )
    text = verdicts.c3(tenfold_unresolved, True)
    assert "Nothing here" in text and "ten times" not in text.split("\n")[0]


def test_c3_names_the_missing_comparisons():
    text = verdicts.c3(comparison("tinyattn_e1", tinyattn_self=AHEAD), True)
    assert text.startswith("**No verdict yet.**") and "`bottleneck_matched`" in text


def test_headline_gives_the_gist_and_keeps_the_provisional_mark():
    final = verdicts.c1(comparison(a=AHEAD, b=BEHIND), "ref", complete=True)
    running = verdicts.c1(comparison(a=AHEAD, b=BEHIND), "ref", complete=False)
    assert verdicts.headline(final) == "C1 does not hold on MiniLM-L6"
    assert verdicts.headline(running) == "provisional: C1 does not hold on MiniLM-L6"
    empty = pd.DataFrame(columns=["method", "mean_difference", "ci_low", "ci_high"])
    assert verdicts.headline(verdicts.c3(empty, complete=False)) == "No verdict yet"
    assert verdicts.headline("plain text\nmore") == "plain text"
