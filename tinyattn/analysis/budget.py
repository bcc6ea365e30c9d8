"""Does the training budget change C1? The ``budget`` profile (10 epochs on MRPC and STS-B) against
the ``cpu`` study (3 and 2 epochs), run by run, and C1 re-judged at both budgets.

Each planned run of the long budget is paired with the short study's run of the same (task, method,
seed): same code, data, learning rate and seed, only the number of epochs differs. Scores are at the
**end of training** (``final_score``: nothing selected on the dev set), in points.

C1 at each budget is the declared analysis of ``tinyattn.analysis.stats``: tiny attention (``tinyattn_e1``)
minus each other method of the profile, paired on (task, seed), bootstrap interval, exact sign test,
Holm over the family, resolved only when both agree. To compare the budgets on the same evidence, both
are judged only on the runs **finished at both budgets**: a comparison counts a (task, seed) pair when
tiny attention and the method each have it at both budgets. The grid finishes over days; everything
here works on any subset of its runs and says how many are done. ``budget_report`` holds what the
chapter shows of it: tables and sentences.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from tinyattn.analysis import stats
from tinyattn.analysis.aggregate import late_gain, learning_curves
from tinyattn.records import RUNS_DIR
from tinyattn.study.profiles import estimate_seconds, load_profile, role
from tinyattn.study.status import ProfileRuns, profile_runs

LONG, SHORT = "budget", "cpu"  # the profiles: the long budget, and the study it pairs with
#: The code the long budget runs from (its YAML's ``code``): the short study's, so that a difference
#: is the budget's alone.
PINNED_COMMIT = load_profile(LONG)["code"]
COMMAND = "tinyattn study --profile budget --jobs 2"
BUDGETS = ("short", "long")
PAIR_COLUMNS = [
    "task",
    "method",
    "seed",
    "short_epochs",
    "long_epochs",
    "short_score",
    "long_score",
    "change",
    "short_run_id",
    "long_run_id",
    "short_hours",
    "long_hours",
]


def planned_frame(planned) -> pd.DataFrame:
    """A profile's planned runs (``RunParams``) as a table: task, method (label), seed, epochs, run id,
    and the runner's planning estimate of its CPU-hours."""
    rows = [
        {
            "task": p.task,
            "method": p.label or p.method,
            "seed": p.seed,
            "epochs": p.epochs,
            "run_id": p.run_id,
            "estimate_hours": estimate_seconds(p) / 3600,
        }
        for p in planned
    ]
    return pd.DataFrame(
        rows, columns=["task", "method", "seed", "epochs", "run_id", "estimate_hours"]
    )


def _finished(runs: pd.DataFrame, name: str, score: str = "final_score") -> pd.DataFrame:
    """One row per (task, method, seed) of finished runs, its ``score`` column as ``score``; a second
    record of one is an error."""
    columns = ["task", "method", "seed", score, "epochs", "run_id", "wall_seconds"]
    if runs.empty:
        empty = pd.DataFrame(columns=columns).rename(columns={score: "score"})
        return empty.set_index(["task", "method", "seed"])
    twice = runs[runs.duplicated(["task", "method", "seed"], keep=False)]
    if not twice.empty:
        raise ValueError(
            f"the {name} runs hold more than one finished record of the same (task, method, seed): "
            + ", ".join(sorted(twice["run_id"]))
        )
    return runs[columns].rename(columns={score: "score"}).set_index(["task", "method", "seed"])


def pair_budgets(
    planned: pd.DataFrame, long: pd.DataFrame, short: pd.DataFrame, score: str = "final_score"
) -> pd.DataFrame:
    """One row per planned long-budget run (``planned``: ``planned_frame``), beside the short study's
    run of the same (task, method, seed): epochs, scores (NaN where a run has not finished),
    ``change`` = long minus short (points), run ids and measured hours. ``long`` and ``short``:
    finished runs as ``aggregate.load_records`` gives them (``score`` names the column compared:
    ``final_score``, the end of training, is the study's protocol; ``score`` is the best dev
    evaluation; and ``epochs``, ``run_id``, ``wall_seconds``)."""
    if planned.empty:
        raise ValueError("the long budget plans no run")
    keys = ["task", "method", "seed"]
    done_long = _finished(long, "long-budget", score)
    done_short = _finished(short, "short-budget", score)
    extra = set(done_long.index) - set(map(tuple, planned[keys].to_numpy()))
    if extra:
        raise ValueError(f"long-budget runs outside its plan: {sorted(extra)}")
    table = planned.set_index(keys)
    table = table.join(done_long.add_prefix("long_")).join(done_short.add_prefix("short_"))
    table = table.reset_index()
    table["long_epochs"] = table["epochs"]  # planned: known before the run finishes
    table["long_run_id"] = table["run_id"]
    table["change"] = table["long_score"] - table["short_score"]
    table["long_hours"] = table["long_wall_seconds"] / 3600
    table["short_hours"] = table["short_wall_seconds"] / 3600
    return table[PAIR_COLUMNS + ["estimate_hours"]]


@dataclass
class BudgetStudy:
    """The two studies and their runs paired by (task, method, seed)."""

    long: ProfileRuns
    short: ProfileRuns
    pairs: pd.DataFrame  # ``pair_budgets``
    reference: str
    family: list[str]  # the methods tiny attention is compared with (profile labels)

    @property
    def planned(self) -> int:
        return len(self.pairs)

    @property
    def done(self) -> int:
        return int(self.pairs["long_score"].notna().sum())

    def scored_by(self, score: str) -> BudgetStudy:
        """The same runs paired on another score column (``pair_budgets``): ``score``, each run's
        best dev evaluation, instead of the protocol's end of training."""
        planned = planned_frame(self.long.planned)
        return replace(self, pairs=pair_budgets(planned, self.long.runs, self.short.runs, score))


def load_budget(
    runs_dir: str = RUNS_DIR,
    long: str = LONG,
    short: str = SHORT,
    reference: str | None = None,
) -> BudgetStudy:
    """Both profiles' finished runs, paired on the end of training (``pair_budgets``; another score:
    ``BudgetStudy.scored_by``); the family is every other method of the long profile; the reference
    is the long profile's ``reference`` role unless given."""
    long_runs, short_runs = profile_runs(long, runs_dir), profile_runs(short, runs_dir)
    reference = reference or role(long_runs.profile, "reference")
    methods = list(long_runs.profile["methods"])
    if reference not in methods:
        raise ValueError(f"the {long!r} profile has no method {reference!r}")
    missing = [m for m in methods if m not in short_runs.profile["methods"]]
    if missing:
        raise ValueError(f"the {short!r} profile has no run of {missing} to pair with")
    pairs = pair_budgets(planned_frame(long_runs.planned), long_runs.runs, short_runs.runs)
    family = [m for m in methods if m != reference]
    return BudgetStudy(long_runs, short_runs, pairs, reference, family)


def paired_runs(pairs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per budget (``short``, ``long``): the runs finished at **both** budgets, as a runs table (task,
    method, seed, score), so that every comparison rests on the same pairs at both budgets."""
    both = pairs[pairs["short_score"].notna() & pairs["long_score"].notna()]
    return {
        budget: both[["task", "method", "seed"]].assign(score=both[f"{budget}_score"])
        for budget in BUDGETS
    }


def _declared(runs: pd.DataFrame, reference: str, family: list[str]) -> pd.DataFrame:
    """``stats.declared_comparison``, or a table of ``too few pairs`` when the reference has none."""
    if not runs.empty and reference in set(runs["method"]):
        return stats.declared_comparison(runs, reference, family)
    empty = {"pairs": 0, "mean_difference": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    rows = [{"method": m, **empty, **stats.sign_test([]), "holm_p": np.nan} for m in family]
    return pd.DataFrame(rows).assign(outcome="too few pairs")


def compare(pairs: pd.DataFrame, reference: str, family: list[str]) -> pd.DataFrame:
    """Tiny attention minus each method at both budgets, on the runs finished at both: one row per
    (budget, method) with the declared analysis' columns (pairs, mean difference, interval, sign
    test, Holm p, outcome)."""
    tables = [
        _declared(runs, reference, family).assign(budget=budget)
        for budget, runs in paired_runs(pairs).items()
    ]
    table = pd.concat(tables, ignore_index=True)
    return table[["budget"] + [c for c in table.columns if c != "budget"]]


def per_task(pairs: pd.DataFrame, reference: str) -> pd.DataFrame:
    """``stats.per_task_differences`` at both budgets on the runs finished at both (a ``budget``
    column added); empty while the reference has no such run."""
    tables = [
        stats.per_task_differences(runs, reference).assign(budget=budget)
        for budget, runs in paired_runs(pairs).items()
        if reference in set(runs["method"])
    ]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def c1_verdict(comparison: pd.DataFrame) -> str:
    """C1 from one budget's declared comparison: ``does not hold`` (some method resolvably better),
    ``holds`` (tiny attention resolvably better than every method), ``not established`` (neither),
    ``no verdict`` (no method has a pair yet). The rule of the GLUE chapter, on the declared outcomes."""
    outcomes = set(comparison["outcome"])
    if not outcomes or outcomes == {"too few pairs"}:
        return "no verdict"
    if "worse" in outcomes:
        return "does not hold"
    return "holds" if outcomes == {"better"} else "not established"


def verdict_change(comparison: pd.DataFrame) -> dict:
    """C1 at each budget, whether it changed, and per method whose outcome changed: short -> long."""
    by_budget = {b: comparison[comparison["budget"] == b] for b in BUDGETS}
    verdict = {b: c1_verdict(table) for b, table in by_budget.items()}
    outcomes = {b: table.set_index("method")["outcome"] for b, table in by_budget.items()}
    moved = {
        m: (outcomes["short"][m], outcomes["long"][m])
        for m in outcomes["short"].index
        if outcomes["short"][m] != outcomes["long"].get(m)
    }
    return {**verdict, "changed": verdict["short"] != verdict["long"], "methods": moved}


def long_curves(study: BudgetStudy, runs_dir: str = RUNS_DIR) -> pd.DataFrame:
    """Every evaluation (twice per epoch) of the long budget's finished runs, one row each."""
    done = set(study.pairs.loc[study.pairs["long_score"].notna(), "long_run_id"])
    return learning_curves(runs_dir, run_ids=done) if done else pd.DataFrame()


def curve_table(
    curves: pd.DataFrame, short_epochs: dict[str, float], methods: list[str] | None = None
) -> pd.DataFrame:
    """Per task and method (in ``methods``' order), over the finished long runs (mean over seeds):
    the dev score at the evaluation closest to where the short budget ended, at the run's best
    evaluation and at its end, the epoch of that best, and the late gain (the last half epoch)."""
    columns = ["task", "method", "seeds", "at_short_end", "best", "best_epoch", "end", "late_gain"]
    if curves.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for (task, method, _seed), run in curves.sort_values("step").groupby(
        ["task", "method", "seed"], sort=False
    ):
        at = run.iloc[int(np.argmin(np.abs(run["epoch"].to_numpy() - short_epochs[task])))]
        best = run.loc[run["score"].idxmax()]
        rows.append(
            {
                "task": task,
                "method": method,
                "at_short_end": at["score"],
                "best": best["score"],
                "best_epoch": best["epoch"],
                "end": run["score"].iloc[-1],
            }
        )
    per_run = pd.DataFrame(rows)
    table = per_run.groupby(["task", "method"], sort=False).agg(
        seeds=("end", "size"),
        at_short_end=("at_short_end", "mean"),
        best=("best", "mean"),
        best_epoch=("best_epoch", "mean"),
        end=("end", "mean"),
    )
    gains = late_gain(curves).set_index(["task", "method"])["gain"]
    table = table.join(gains.rename("late_gain")).reset_index()[columns]
    rank = {m: i for i, m in enumerate(methods or dict.fromkeys(curves["method"]))}
    return table.sort_values(
        ["task", "method"], key=lambda s: s.map(rank) if s.name == "method" else s, kind="stable"
    ).reset_index(drop=True)


def calibration(pairs: pd.DataFrame) -> float:
    """How much longer the finished long runs took than their short twins' measured hours scaled by
    the ratio of epochs (the median over finished runs; 1.0 before any has finished)."""
    scaled = pairs["short_hours"] * pairs["long_epochs"] / pairs["short_epochs"]
    ratios = (pairs["long_hours"] / scaled).dropna()
    return float(ratios.median()) if len(ratios) else 1.0


def remaining(study: BudgetStudy) -> pd.DataFrame:
    """The long budget's unfinished runs, with a projection of their CPU-hours: the short twin's
    measured hours scaled by the ratio of epochs and by ``calibration`` (the runner's planning
    estimate where there is no twin)."""
    rest = study.pairs[study.pairs["long_score"].isna()].copy()
    scaled = rest["short_hours"] * rest["long_epochs"] / rest["short_epochs"]
    rest["projected_hours"] = (scaled * calibration(study.pairs)).fillna(rest["estimate_hours"])
    return rest[["task", "method", "seed", "long_run_id", "projected_hours"]].reset_index(drop=True)
