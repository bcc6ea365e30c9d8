"""The exploratory pilot's C3 comparisons (``tinyattn.analysis.pilot``): estimates with intervals, and
a verdict only where the grid's design can reach one."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from tinyattn.analysis import pilot, verdicts
from tinyattn.study.profiles import load_profile
from tinyattn.study.status import ProfileRuns

ROLES = {
    "reference": "tinyattn_e1",
    "no_context": "tinyattn_self",
    "same_size_bottleneck": "bottleneck_matched",
    "larger_bottleneck": "bottleneck_10x",
    "study_bottleneck": "pfeiffer",
    "head_dims": ["tinyattn_d16", "tinyattn_d4"],
}
VERDICTS = ("C3 holds", "C3 does not hold", "C3 is not established")


def profile(tasks: int, seeds: int) -> dict:
    return {
        "name": "ablations",
        "tasks": {f"task{t}": {} for t in range(tasks)},
        "seeds": list(range(seeds)),
        "roles": ROLES,
    }


def runs(tasks: int, seeds: int, lead: dict[str, float]) -> pd.DataFrame:
    """Every C3 variant at 70 (+ a little per seed), tiny attention ``lead[label]`` points above it."""
    rows = []
    for t in range(tasks):
        for s in range(seeds):
            base = 70.0 + 0.3 * s
            rows.append(
                {"task": f"task{t}", "method": "tinyattn_e1", "seed": s, "final_score": base}
            )
            for label, gap in lead.items():
                rows.append(
                    {"task": f"task{t}", "method": label, "seed": s, "final_score": base - gap}
                )
    return pd.DataFrame(rows)


ALL_AHEAD = {"tinyattn_self": 5.0, "bottleneck_matched": 5.0, "bottleneck_10x": 5.0}


def test_the_pilots_six_pairs_can_never_decide_a_family_of_three():
    assert pilot.design_pairs(load_profile("ablations")) == 6
    assert not pilot.can_decide(6, 3)  # all won: p = 0.031, Holm x3 = 0.094
    assert pilot.can_decide(7, 3) and pilot.can_decide(6, 1)


def test_no_verdict_where_the_design_cannot_reach_one_however_clear_the_pairs():
    """Tiny attention 5 points ahead of every variant on every one of six pairs: the estimates say
    so, but the chapter states no verdict, not even *not established*."""
    design = profile(2, 3)
    family = pilot.c3_estimates(runs(2, 3, ALL_AHEAD), design)
    assert list(family["method"]) == ["tinyattn_self", "bottleneck_matched", "bottleneck_10x"]
    assert (family["pairs"] == 6).all()
    assert family["mean_difference"].tolist() == pytest.approx([5.0] * 3)
    text = pilot.c3_reading(family, design, complete=True, round_done=False)
    assert verdicts.headline(text) == "No verdict on C3 from the exploratory pilot"
    assert not any(v in text for v in VERDICTS)
    assert "the sign test's p would be 0.031" in text and "makes 0.094" in text
    assert "(7 pairs are the fewest that could)" in text
    assert (
        "minus the same adapter without context (`tinyattn_self`) +5.00 points (95 % interval"
        in (text)
    )
    assert "6 of 6 pairs won" in text and "pending" in text
    opening = pilot.c3_opening(text, family, design, round_done=False)
    assert opening.startswith("**No verdict on C3 from the exploratory pilot**, whose 6 paired")
    assert opening.endswith("whose verdict is pending until that grid is complete.")
    intro = pilot.c3_intro(text, family, design, round_done=False)
    assert intro.startswith("No verdict on C3 from the exploratory pilot: the pilot's estimates")
    assert "minus one ten times larger +5.00 (+5.00 to +5.00)" in intro and "`" not in intro
    assert intro.endswith("; the verdict is pending the confirmatory round")


def test_once_the_confirmatory_round_is_done_the_pilot_points_to_its_verdict():
    """The pilot's sentences say the round decided C3 once its grid is complete, and no longer
    that its verdict is pending; the estimates are the same."""
    design = profile(2, 3)
    family = pilot.c3_estimates(runs(2, 3, ALL_AHEAD), design)
    pending = pilot.c3_reading(family, design, complete=True, round_done=False)
    text = pilot.c3_reading(family, design, complete=True, round_done=True)
    assert text.split("These estimates")[0] == pending.split("These estimates")[0]
    assert text.endswith("which decided C3 on new seeds: its verdict opens this chapter.")
    opening = pilot.c3_opening(text, family, design, round_done=True)
    assert opening.endswith("see The confirmatory plan), whose verdict opens this chapter.")
    intro = pilot.c3_intro(text, family, design, round_done=True)
    assert intro.endswith("(95 % intervals)")  # the row opens with the round's own verdict
    assert not any("pending" in sentence for sentence in (text, opening, intro))


def test_a_design_that_can_decide_gets_the_declared_verdict():
    """Three tasks of three seeds (nine pairs) can resolve a family of three: the same rule as
    before (``verdicts.c3``), and the sentences carry no "pending"."""
    design = profile(3, 3)
    family = pilot.c3_estimates(runs(3, 3, ALL_AHEAD), design)
    text = pilot.c3_reading(family, design, complete=True, round_done=False)
    assert text == verdicts.c3(family, True, roles=ROLES)
    assert verdicts.headline(text) == "C3 holds on MiniLM-L6"
    assert "pending" not in pilot.c3_intro(text, family, design, round_done=False)
    behind = pilot.c3_estimates(runs(3, 3, {**ALL_AHEAD, "tinyattn_self": -5.0}), design)
    reading = pilot.c3_reading(behind, design, False, round_done=False)
    assert verdicts.headline(reading).startswith("provisional: C3 does not hold")


def test_nothing_finished_yet_is_said_so():
    design = profile(2, 3)
    empty = pilot.c3_estimates(pd.DataFrame(), design)
    assert empty.empty
    text = pilot.c3_reading(empty, design, complete=False, round_done=False)
    assert "no pair of tiny attention and a C3 variant has finished yet" in text
    opening = pilot.c3_opening(text, empty, design, round_done=False)
    assert opening.endswith("has finished yet.")
    assert pilot.per_task_table(pilot.c3_per_task(pd.DataFrame(), design)).empty


def test_per_task_estimates_give_a_t_interval_and_the_seeds_won():
    design = profile(2, 3)
    table = pilot.per_task_table(pilot.c3_per_task(runs(2, 3, ALL_AHEAD), design))
    assert list(table.index) == ["tinyattn_self", "bottleneck_matched", "bottleneck_10x"]
    assert list(table.columns) == ["task0", "task1"]
    assert table.loc["tinyattn_self", "task0"] == "+5.00 (+5.00, +5.00), 3 of 3"


def test_the_labels_come_from_the_profiles_roles():
    renamed = {**ROLES, "no_context": "blind", "head_dims": ["wide"]}
    assert pilot.c3_labels({"roles": renamed}) == ["blind", "bottleneck_matched", "bottleneck_10x"]
    planned = [
        SimpleNamespace(label="tinyattn_e1", method_options={"head_dim": 1}),
        SimpleNamespace(label="wide", method_options={"head_dim": 8}),
        SimpleNamespace(label="pfeiffer", method_options={"reduction_factor": 16}),
    ]
    study = ProfileRuns.of({"name": "x", "roles": renamed}, planned, None, pd.DataFrame())
    assert pilot.head_dims(study) == {"tinyattn_e1": 1, "wide": 8}
    with pytest.raises(ValueError, match="gives no method the role 'head_dims'"):
        pilot.head_dims(
            ProfileRuns.of({"name": "x", "roles": {"reference": "a"}}, [], None, pd.DataFrame())
        )


def test_the_committed_ablations_profile_names_the_sweep_and_the_study_bottleneck():
    ablations = load_profile("ablations")
    assert ablations["roles"]["head_dims"] == ["tinyattn_d4", "tinyattn_d16", "tinyattn_d64"]
    assert ablations["roles"]["study_bottleneck"] == "pfeiffer"
