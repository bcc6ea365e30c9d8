"""What a design can decide: the distribution of a declared rule's verdicts over true effects.

``decidability(rule, tasks, seeds, spread, family=k)`` draws each (task, seed) pair's difference
from a normal distribution with the true effect as its mean and the pilot's spread of that task as
its standard deviation, applies the rule to every simulated grid at Holm's strictest step (each test
at ``alpha / k``: what the design decides however the family's other comparisons come out), and
counts the outcomes. ``decides`` reads the smallest effect the design finds in the right direction
with the declared power. A rule that cannot reach a decided outcome at the planned number of pairs
(the exact sign test on 6 pairs under Holm over 3 comparisons) shows it here as zero probability
at every effect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from tinyattn.analysis.margin import OUTCOMES
from tinyattn.analysis.stats import ALPHA, holm, sign_test

#: True effects, in points, at which every design is simulated.
EFFECTS = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
#: The probability of the right verdict that makes an effect "decidable".
POWER = 0.8


def decidability(
    rule,
    tasks: Sequence[str],
    seeds: int,
    spread: Mapping[str, float],
    *,
    family: int = 1,
    effects: Sequence[float] = EFFECTS,
    simulations: int = 4000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per true effect: the probability of each outcome (``ahead``, ``behind``,
    ``equivalent``, ``undecided``) and of the right one (``right``: the effect's side, or
    ``equivalent`` at 0), for ``seeds`` pairs per task with per-task standard deviations ``spread``."""
    missing = [t for t in tasks if t not in spread]
    if missing:
        raise ValueError(f"the pilot gives no spread for task(s) {missing}")
    rng = np.random.default_rng(seed)
    sd = np.array([spread[t] for t in tasks], dtype=float)[:, None]
    noise = rng.standard_normal((simulations, len(tasks), seeds)) * sd
    rows = []
    for effect in effects:
        outcomes = rule.outcomes(noise + effect, family=family)
        shares = {o: float((outcomes == o).mean()) for o in OUTCOMES}
        right = "ahead" if effect > 0 else "behind" if effect < 0 else "equivalent"
        rows.append({"effect": float(effect), **shares, "right": shares[right]})
    return pd.DataFrame(rows)


def decides(table: pd.DataFrame, power: float = POWER) -> float:
    """The smallest effect size that the design finds in the right direction with ``power``, on both
    sides (NaN when none in the table); the effects from there up are found too."""
    sizes = sorted({abs(e) for e in table["effect"] if e != 0})
    right = table.set_index("effect")["right"]
    found = [s for s in sizes if right.get(s, 0) >= power and right.get(-s, 0) >= power]
    return float(found[0]) if found else float("nan")


def ever_decides(table: pd.DataFrame) -> bool:
    """Whether the rule reaches a decided outcome (ahead, behind or equivalent) at any effect."""
    return bool((table["undecided"] < 1.0).any())


def sign_floor(pairs: int, family: int) -> tuple[float, float]:
    """The smallest two-sided exact sign-test p over ``pairs`` pairs (every pair won), and the smallest
    Holm-adjusted p it can become in a family of ``family`` comparisons (all of them as clear): below
    ``ALPHA`` or not, whatever the scores."""
    if pairs < 1:
        return 1.0, 1.0
    p = sign_test(np.ones(pairs))["sign_p"]
    return float(p), float(holm([p] * family)[0])


def family_sign_floor(pairs: int, family_pairs: Sequence[int]) -> float:
    """The smallest Holm-adjusted sign-test p that a comparison of ``pairs`` pairs can reach in a family
    whose comparisons have ``family_pairs`` pairs (itself included). Comparisons with more pairs can be
    clearer and come first in Holm's order; those with as few pairs or fewer cannot, so the floor is
    the all-won p times their number."""
    p = sign_floor(pairs, 1)[0]
    behind = sum(1 for n in family_pairs if n <= pairs)
    return float(min(1.0, p * max(1, behind)))


def pairs_needed(family: int, limit: int = 64) -> int:
    """The fewest pairs with which the sign test can reach ``ALPHA`` after Holm over ``family``."""
    for n in range(1, limit + 1):
        if sign_floor(n, family)[1] < ALPHA:
            return n
    raise ValueError(f"no comparison of up to {limit} pairs can be decided")
