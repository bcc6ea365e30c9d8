"""Does the training budget change C1? The ``budget`` profile (10 epochs on MRPC and STS-B) against
the ``cpu`` study (3 and 2 epochs), run by run, and C1 re-judged at both budgets.

Each planned run of the long budget is paired with the short study's run of the same (task, method,
seed): same code, data, learning rate and seed, only the number of epochs differs. Scores are at the
**end of training** (``final_score``: nothing selected on the dev set), in points.

C1 at each budget is the declared analysis of ``tinyattn.stats``: tiny attention (``tinyattn_e1``)
minus each other method of the profile, paired on (task, seed), bootstrap interval, exact sign test,
Holm over the family, resolved only when both agree. To compare the budgets on the same evidence, both
are judged only on the runs **finished at both budgets**: a comparison counts a (task, seed) pair when
tiny attention and the method each have it at both budgets. The grid finishes over days; everything
here works on any subset of its runs and says how many are done.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from tinyattn import stats
from tinyattn.aggregate import late_gain, learning_curves
from tinyattn.profiles import estimate_seconds
from tinyattn.study import ProfileRuns, profile_runs

LONG, SHORT, REFERENCE = "budget", "cpu", "tinyattn_e1"
#: The code the long budget runs from: the short study's, so that a difference is the budget's alone.
PINNED_COMMIT = "47152b3"
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
    runs_dir: str = "results/runs",
    long: str = LONG,
    short: str = SHORT,
    reference: str = REFERENCE,
) -> BudgetStudy:
    """Both profiles' finished runs, paired on the end of training (``pair_budgets``; another score:
    ``BudgetStudy.scored_by``); the family is every other method of the long profile."""
    long_runs, short_runs = profile_runs(long, runs_dir), profile_runs(short, runs_dir)
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


def smallest_holm_p(pairs: int, family_size: int) -> float:
    """The smallest Holm-adjusted sign-test p a comparison of ``pairs`` pairs can reach in a family of
    ``family_size``: every pair won, every comparison of the family as clear."""
    if pairs < 1:
        return 1.0
    p = stats.sign_test(np.ones(pairs))["sign_p"]
    return float(stats.holm([p] * family_size)[0])


def pairs_needed(family_size: int, limit: int = 64) -> int:
    """The fewest pairs with which the declared rule can resolve a comparison at all."""
    for n in range(1, limit + 1):
        if smallest_holm_p(n, family_size) < stats.ALPHA:
            return n
    raise ValueError(f"no comparison of up to {limit} pairs can be resolved")


def long_curves(study: BudgetStudy, runs_dir: str = "results/runs") -> pd.DataFrame:
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


# --------------------------------------------------------------------------- what the chapter shows


def _epochs(values) -> str:
    """``"10"`` or ``"2-3"``: the distinct epoch counts of a budget."""
    found = sorted({int(v) for v in values if pd.notna(v)})
    if not found:
        return "?"
    return f"{found[0]}" if len(found) == 1 else f"{found[0]}–{found[-1]}"


def budget_labels(study: BudgetStudy) -> dict[str, str]:
    """How the chapter's tables name the two budgets: their epochs, e.g. ``2–3 epochs``."""
    return {b: f"{_epochs(study.pairs[f'{b}_epochs'])} epochs" for b in BUDGETS}


def _score(value: float) -> str:
    return "…" if pd.isna(value) else f"{value:.1f}"


def score_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per task and method, one column per seed: "short → long" end-of-training score ("…" where a run
    has not finished), the epochs of each budget, and the mean change over the seeds done at both."""
    cells = pairs.assign(
        cell=[
            f"{_score(s)} → {_score(g)}" for s, g in zip(pairs["short_score"], pairs["long_score"])
        ]
    )
    table = cells.pivot(index=["task", "method"], columns="seed", values="cell")
    table.columns = [f"seed {s}" for s in table.columns]
    grouped = pairs.groupby(["task", "method"], sort=False)
    epochs = grouped.apply(
        lambda g: f"{_epochs(g['short_epochs'])} → {_epochs(g['long_epochs'])}",
        include_groups=False,
    )
    change = grouped["change"].agg(["mean", "count", "size"])
    table.insert(0, "epochs", epochs)
    table["mean change"] = change.apply(
        lambda c: (
            "…" if c["count"] == 0 else f"{c['mean']:+.1f} ({int(c['count'])} of {int(c['size'])})"
        ),
        axis=1,
    )
    order = list(dict.fromkeys(zip(pairs["task"], pairs["method"])))
    return table.loc[order].rename_axis(index=["task", "method"], columns=None)


def comparison_table(comparison: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """The declared comparison at both budgets, for reading: per method and budget the pairs, the mean
    difference with its 95 % interval in parentheses, pairs won-lost, sign-test and Holm p, and the
    outcome."""

    def difference(row) -> str:
        if pd.isna(row["mean_difference"]):
            return "—"
        if pd.isna(row["ci_low"]):
            return f"{row['mean_difference']:+.2f}"
        return f"{row['mean_difference']:+.2f} ({row['ci_low']:+.2f}, {row['ci_high']:+.2f})"

    holm = comparison["holm_p"].map(lambda v: "—" if pd.isna(v) else f"{v:.3f}")
    table = pd.DataFrame(
        {
            "method": comparison["method"],
            "budget": comparison["budget"].map(labels),
            "pairs": comparison["pairs"].astype(int),
            "difference": comparison.apply(difference, axis=1),
            "won–lost": [f"{w}–{lo}" for w, lo in zip(comparison["wins"], comparison["losses"])],
            "sign p / Holm": [f"{p:.3f} / {h}" for p, h in zip(comparison["sign_p"], holm)],
            "outcome": comparison["outcome"],
        }
    )
    order = {m: i for i, m in enumerate(dict.fromkeys(comparison["method"]))}
    table = table.sort_values("method", key=lambda s: s.map(order), kind="stable")
    return table.set_index(["method", "budget"])


def _biggest_move(comparison: pd.DataFrame) -> pd.Series | None:
    """The method whose mean difference to tiny attention moved most between the budgets."""
    wide = comparison.pivot(index="method", columns="budget", values="mean_difference").dropna()
    if wide.empty:
        return None
    moved = (wide["long"] - wide["short"]).abs()
    method = moved.idxmax()
    long = comparison[(comparison["budget"] == "long") & (comparison["method"] == method)].iloc[0]
    return pd.Series({"method": method, "short": wide.loc[method, "short"], **long.to_dict()})


def _so_far(pairs: pd.DataFrame, long_phrase: str) -> str:
    """Before any comparison is complete: how far the longer budget moved the finished runs."""
    done = pairs.dropna(subset=["change"])
    if done.empty:
        return ""
    groups = [f"`{m}` on {t}" for t, m in dict.fromkeys(zip(done["task"], done["method"]))]
    mean = done["change"].mean()
    return (
        f"; so far {long_phrase} moved the end-of-training score of the {len(done)} finished "
        f"run(s) ({', '.join(groups)}) by {mean:+.1f} points on average (from "
        f"{done['change'].min():+.1f} to {done['change'].max():+.1f}), against the same seeds' "
        f"`{SHORT}` runs."
    )


def change_sentence(study: BudgetStudy) -> str:
    """For the GLUE chapter: per task, how the longer budget moved each method's end-of-training
    score (the mean over the seeds finished at both budgets), the reference first."""
    done = study.pairs.dropna(subset=["change"])
    if done.empty:
        return "No run of the longer budget has finished yet."
    long_phrase = f"{_epochs(study.pairs['long_epochs'])} epochs"
    order = [study.reference, *study.family]
    parts = []
    for task, group in done.groupby("task", sort=False):
        means = group.groupby("method")["change"].mean().reindex(order).dropna()
        seeds = group.groupby("method")["seed"].nunique()
        moves = ", ".join(
            f"`{m}` {v:+.1f} ({seeds[m]} seed{'s' if seeds[m] != 1 else ''})"
            for m, v in means.items()
        )
        parts.append(f"on {task}, {moves}")  # the task as the tables name it
    return (
        f"Measured with {long_phrase} instead of the `{study.short.profile['name']}` budget, the "
        "end-of-training score moved as follows (points, the mean over the seeds finished at both "
        "budgets): " + "; ".join(parts) + "."
    )


def headline(study: BudgetStudy, comparison: pd.DataFrame) -> str:
    """The chapter's first sentence: what the budget study says so far, with its strongest number and
    how many runs it rests on."""
    labels = budget_labels(study)
    long_phrase = f"{_epochs(study.pairs['long_epochs'])} epochs"
    done, planned = study.done, study.planned
    status = (
        f"With all {planned} runs done"
        if done == planned
        else f"With {done} of {planned} runs done"
    )
    move = _biggest_move(comparison)
    if move is None:
        return (
            f"{status}, the budget study cannot yet say whether {long_phrase} change C1: no "
            "comparison of tiny attention with another method is finished at both budgets yet"
            + (_so_far(study.pairs, long_phrase) or ".")
        )
    most = int(comparison["pairs"].max())
    gap = (
        f"; the largest move is tiny attention's gap to `{move['method']}`, from "
        f"{move['short']:+.2f} to {move['mean_difference']:+.2f} points, tiny attention winning "
        f"{int(move['wins'])} of {int(move['pairs'])} pairs at {long_phrase}."
    )
    change = verdict_change(comparison)
    if change["short"] == change["long"] == "no verdict":
        return (
            f"{status}, the budget study cannot yet say whether {long_phrase} change C1: no "
            f"comparison has more than {most} pair finished at both budgets" + gap
        )
    if change["changed"]:
        said = (
            f"C1's verdict goes from *{change['short']}* at the `{study.short.profile['name']}` "
            f"budget ({labels['short']}) to *{change['long']}* at {labels['long']}"
        )
    else:
        said = f"C1's verdict is *{change['long']}* at both budgets"
    family = int((comparison["budget"] == "long").sum())
    full = study.planned // (len(study.family) + 1)  # the pairs of a finished comparison
    limit = ""
    if smallest_holm_p(full, family) >= stats.ALPHA:
        limit = (
            f" (under the declared rule no comparison of this grid can be resolved: even {full} "
            f"pairs of {full} won give a Holm p of {smallest_holm_p(full, family):.3f}; it needs "
            f"{pairs_needed(family)} pairs)"
        )
    elif smallest_holm_p(most, family) >= stats.ALPHA:
        limit = (
            f" (no comparison of {most} pairs can be resolved yet; it needs {pairs_needed(family)})"
        )
    provisional = "" if done == planned else ", provisionally"
    return f"{status}{provisional}, {said}{limit}" + gap
