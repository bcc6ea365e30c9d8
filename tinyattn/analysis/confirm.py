"""The confirmatory round for C2 and C3 (``profiles/confirm.yaml``): its declared plan, what its
design can decide, and its verdicts once every run has finished.

The plan (the profile's ``plan``) names each claim's family of comparisons, each a difference
``treatment - control`` in points with the outcome the paper predicts, the rule (``margin.MarginRule``)
and the effect each comparison is planned to decide. ``design`` simulates the plan's design with
the pilot grids' spreads (``pilot_spread``); ``verdicts`` applies the rule to the records, and only to a
complete grid: a partial grid gets no verdict, so that no one reads the comparisons before the
design's end. ``claim_reading`` turns a family's outcomes into the claim's, by the rule the plan
states.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from tinyattn.analysis.decidability import POWER, decidability, decides
from tinyattn.analysis.experts import deployment_scores
from tinyattn.analysis.margin import MarginRule, family_verdicts
from tinyattn.metrics import main_metric
from tinyattn.records import ANALYSIS_DIR, RUNS_DIR, read_reports
from tinyattn.study.profiles import load_profile, role

PROFILE = "confirm"
#: The exploratory grids whose spreads size the design (their seeds are not reused).
PILOT_PROFILES = ("cpu", "ablations")


def two_stage(profile: dict) -> list[str]:
    """A profile's methods that start from the reference's own adapter (``two_stage``): left out of
    the pilot's spreads, since their pairs share its training and so understate the spread of
    independently trained variants."""
    return [label for label, v in profile["methods"].items() if (v or {}).get("two_stage")]


@dataclass(frozen=True)
class Comparison:
    """One declared comparison: ``treatment - control`` on the given score columns (the same label
    twice compares two scores of the same runs)."""

    claim: str
    name: str
    treatment: str
    control: str
    predicted: str  # "ahead" or "equivalent"
    decides: float  # the effect size (points) the design is planned to decide with the power
    treatment_score: str = "final_score"
    control_score: str = "final_score"

    @property
    def within_runs(self) -> bool:
        return self.treatment == self.control


@dataclass(frozen=True)
class Plan:
    rule: MarginRule
    power: float
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    comparisons: tuple[Comparison, ...]

    def family(self, claim: str) -> list[Comparison]:
        return [c for c in self.comparisons if c.claim == claim]

    @property
    def claims(self) -> list[str]:
        return list(dict.fromkeys(c.claim for c in self.comparisons))


def load_plan(profile: str | dict = PROFILE) -> Plan:
    """The plan declared in a profile's ``plan`` block, checked against the profile's methods."""
    profile = profile if isinstance(profile, dict) else load_profile(profile)
    if "plan" not in profile:
        raise ValueError(f"profile {profile['name']!r} declares no plan")
    spec = profile["plan"]
    comparisons = []
    for claim, family in spec["claims"].items():
        for name, c in family.items():
            comparison = Comparison(claim=claim, name=name, **c)
            for label in (comparison.treatment, comparison.control):
                if label not in profile["methods"]:
                    raise ValueError(f"plan comparison {name!r} names {label!r}, not a method")
            if comparison.predicted not in ("ahead", "equivalent"):
                raise ValueError(f"plan comparison {name!r}: predicted must be ahead or equivalent")
            comparisons.append(comparison)
    return Plan(
        rule=MarginRule(margin=float(spec["margin"]), alpha=float(spec["alpha"])),
        power=float(spec.get("power", POWER)),
        tasks=tuple(profile["tasks"]),
        seeds=tuple(profile["seeds"]),
        comparisons=tuple(comparisons),
    )


def pair_table(runs: pd.DataFrame, comparison: Comparison) -> pd.DataFrame:
    """``task``, ``seed``, ``difference``: the comparison on each (task, seed) both sides finished."""
    columns = ["task", "seed", "difference"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    sides = []
    for label, score in (
        (comparison.treatment, comparison.treatment_score),
        (comparison.control, comparison.control_score),
    ):
        side = runs[runs["method"] == label]
        if score not in side:
            return pd.DataFrame(columns=columns)
        sides.append(side.set_index(["task", "seed"])[score])
    table = (sides[0] - sides[1]).dropna().rename("difference").reset_index()
    return table[columns]


# ----------------------------------------------------------------------------- the design
def pilot_runs(runs_dir: str = RUNS_DIR) -> pd.DataFrame:
    """The finished runs of the pilot grids (the exploratory ``cpu`` and ``ablations`` studies)."""
    from tinyattn.study.status import profile_runs

    frames = [profile_runs(name, runs_dir).runs.assign(grid=name) for name in PILOT_PROFILES]
    return pd.concat(frames, ignore_index=True)


def _pilot_sides(grid: str) -> tuple[str, list[str]]:
    """A pilot grid's reference (its ``reference`` role, against which the paired spreads are
    measured) and its two-stage methods (left out)."""
    profile = load_profile(grid)
    return role(profile, "reference"), two_stage(profile)


def task_spreads(pilot: pd.DataFrame) -> pd.Series:
    """Per task: the median, over every independently trained method of the pilot grids, of the
    standard deviation of its paired differences with the pilot's tiny attention (E = 1) at the end of
    training. The median keeps one collapsed method from setting a task's spread."""
    sds = []
    for name, grid in pilot.groupby("grid"):
        scores = grid.pivot_table(index=["task", "seed"], columns="method", values="final_score")
        reference, left_out = _pilot_sides(name)
        if reference not in scores:
            continue
        others = [m for m in scores.columns if m not in (reference, *left_out)]
        diffs = scores[others].rsub(scores[reference], axis=0)
        sds.append(diffs.groupby(level="task").std().stack())
    return pd.concat(sds).groupby(level=0).median()


def averaging_spreads(analysis_dir: str = ANALYSIS_DIR, runs: pd.DataFrame | None = None):
    """Per task: the standard deviation over the pilot's experts analyses of the weight-averaged
    model's score minus the trained (un-averaged) model's, at each analysed run's kept weights."""
    rows = []
    for report in read_reports(analysis_dir, None if runs is None else runs["run_id"]):
        if "variants" not in report:
            continue
        metric = main_metric(report["task"])
        variants = {v["variant"]: v for v in report["variants"]}
        if {"averaged", "trained_form"} <= set(variants):
            gap = variants["averaged"][metric] - variants["trained_form"][metric]
            rows.append({"task": report["task"], "difference": 100.0 * gap})
    return pd.DataFrame(rows).groupby("task")["difference"].std()


def pilot_spread(
    comparison: Comparison,
    tasks: tuple[str, ...],
    pilot: pd.DataFrame,
    spreads: pd.Series,
    averaging: pd.Series,
) -> dict[str, float]:
    """The spread the design is sized with, per task: for a comparison between runs, the larger of
    the task's spread (``task_spreads``) and the comparison's own pilot spread where the pilot ran it;
    within runs (averaging), the experts analyses' spread, or its largest where a task has none."""
    if comparison.within_runs:
        return {t: float(averaging.get(t, averaging.max())) for t in tasks}
    own = pair_table(pilot[pilot["grid"] == "ablations"], comparison)
    own_sd = own.groupby("task")["difference"].std() if not own.empty else pd.Series(dtype=float)
    return {t: float(max(spreads[t], own_sd.get(t, 0.0))) for t in tasks}


def design(plan: Plan, pilot: pd.DataFrame, averaging: pd.Series, **kwargs) -> pd.DataFrame:
    """The plan's decidability: per comparison and true effect, the probability of each outcome at
    the planned seeds with the pilot's spreads and Holm's strictest step in its family."""
    spreads = task_spreads(pilot)
    tables = []
    for c in plan.comparisons:
        spread = pilot_spread(c, plan.tasks, pilot, spreads, averaging)
        table = decidability(
            plan.rule,
            plan.tasks,
            len(plan.seeds),
            spread,
            family=len(plan.family(c.claim)),
            **kwargs,
        )
        tables.append(table.assign(claim=c.claim, comparison=c.name))
    return pd.concat(tables, ignore_index=True)


def design_summary(plan: Plan, table: pd.DataFrame) -> pd.DataFrame:
    """Per comparison: the pairs it has, the smallest effect it decides with the power, whether that
    meets the plan, and the chance of an *equivalent* verdict when there is no difference."""
    rows = []
    for c in plan.comparisons:
        own = table[table["comparison"] == c.name]
        found = decides(own, plan.power)
        rows.append(
            {
                "claim": c.claim,
                "comparison": c.name,
                "difference": f"{c.treatment} − {c.control}"
                if not c.within_runs
                else f"{c.treatment}: {c.treatment_score} − {c.control_score}",
                "predicted": c.predicted,
                "pairs": len(plan.tasks) * len(plan.seeds),
                "family": len(plan.family(c.claim)),
                "decides": found,
                "planned": c.decides,
                "meets_plan": bool(found <= c.decides),
                "equivalent_at_0": float(own.loc[own["effect"] == 0, "equivalent"].iloc[0]),
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- the verdicts
def verdicts(plan: Plan, runs: pd.DataFrame, complete: bool) -> dict[str, pd.DataFrame]:
    """Per claim, its family under the rule (``margin.family_verdicts``), on a complete grid only."""
    if not complete:
        raise ValueError(
            "the confirmatory grid is not complete: its verdicts are read once every run has finished"
        )
    return {
        claim: family_verdicts({c.name: pair_table(runs, c) for c in plan.family(claim)}, plan.rule)
        for claim in plan.claims
    }


def supports(comparison: Comparison, row) -> str:
    """``supports``, ``refutes`` or ``undecided``: what one comparison's outcome says of the paper's
    prediction. A predicted lead is supported by *ahead* and refuted by *behind* or *equivalent*; a
    predicted equivalence (averaging keeps the accuracy) is supported by an equivalence test passed
    or by *ahead*, and refuted by *behind* outside the margin."""
    outcome, within = row["outcome"], bool(row["within_margin"])
    if comparison.predicted == "ahead":
        return {"ahead": "supports", "behind": "refutes", "equivalent": "refutes"}.get(
            outcome, "undecided"
        )
    if within or outcome in ("ahead", "equivalent"):
        return "supports"
    return "refutes" if outcome == "behind" else "undecided"


def claim_reading(plan: Plan, claim: str, table: pd.DataFrame) -> str:
    """A claim ``holds`` when every comparison of its family supports the paper, ``fails`` when any
    refutes it, and is ``undecided`` otherwise."""
    readings = [supports(c, table.set_index("comparison").loc[c.name]) for c in plan.family(claim)]
    if "refutes" in readings:
        return "fails"
    return "holds" if all(r == "supports" for r in readings) else "undecided"


def finished_claim(
    plan: Plan, claim: str, runs: pd.DataFrame, done: int, planned: int
) -> pd.DataFrame | None:
    """The claim's family under the rule once every one of the grid's ``planned`` runs is done;
    None before (no outcome of a partial grid is computed)."""
    return verdicts(plan, runs, complete=True)[claim] if done >= planned else None


# ----------------------------------------------------------------------------- the mean form
def mean_form_pairs(
    runs: pd.DataFrame, roles: dict, variants: pd.DataFrame, analysed: pd.DataFrame, plan: Plan
) -> dict[str, pd.DataFrame]:
    """C2's comparisons that studies of the mean form can answer, as pair differences the plan's
    rule reads, both on end-of-training weights: ``experts``, the experts minus the reference on each
    (task, seed) of ``runs`` (a study with those ``roles``), and ``averaging``, the weight average
    minus the experts as trained on each run of ``analysed`` (run id, task, seed: runs whose
    analysis scored their last step's weights) from ``variants`` (the analysis reports'
    deployments; two-stage only). The compute-matched control is the round's own, so that
    comparison is left out."""
    names = {c.name: c for c in plan.family("C2")}
    chosen = analysed.set_index("run_id")
    scores = deployment_scores(variants, "two-stage")
    averaging = pd.DataFrame(columns=["task", "seed", "difference"])
    if {"averaged", "trained_form"} <= set(scores.columns):
        scores = scores[scores.index.get_level_values("run_id").isin(chosen.index)]
        gap = (scores["averaged"] - scores["trained_form"]).dropna().droplevel("task")
        averaging = pd.DataFrame(
            {
                "task": chosen.loc[gap.index, "task"].to_numpy(),
                "seed": chosen.loc[gap.index, "seed"].to_numpy(),
                "difference": gap.to_numpy(),
            }
        )
    versus = Comparison(
        "C2", "experts", roles["experts"], roles["reference"], names["experts"].predicted, 0.0
    )
    return {"averaging": averaging, "experts": pair_table(runs, versus)}


def mean_form_verdicts(
    plan: Plan, pairs: dict[str, pd.DataFrame], sources: dict[str, str] | None = None
) -> pd.DataFrame:
    """``mean_form_pairs`` under the plan's rule (Holm over the comparisons given), with where each
    comparison's runs come from (``sources``: name -> text) and what each outcome says of the
    paper's prediction (``supports``): an exploratory reading of runs seen before the rule was fixed,
    never the round's verdict."""
    table = family_verdicts(pairs, plan.rule)
    if table.empty:
        return table
    if sources:
        table["source"] = table["comparison"].map(sources).fillna("")
    declared = {c.name: c for c in plan.family("C2")}
    table["reading"] = [supports(declared[row["comparison"]], row) for _, row in table.iterrows()]
    return table


# ----------------------------------------------------------------------------- the design's rules
def commit_time(commit: str, root: str | Path = ".") -> datetime:
    """When ``commit`` was committed (from this checkout's git history)."""
    out = subprocess.run(
        ["git", "-C", str(root), "show", "-s", "--format=%cI", commit],
        capture_output=True,
        text=True,
        check=True,
    )
    return datetime.fromisoformat(out.stdout.strip())


def started_before(records: list[dict], moment: datetime) -> list[str]:
    """The run ids among ``records`` that started before ``moment`` (none, for a pre-registered grid)."""
    early = []
    for record in records:
        started = datetime.strptime(record["started_at"], "%Y-%m-%dT%H:%M:%S%z")
        if started < moment:
            early.append(record["run_id"])
    return early


def devices(runs: pd.DataFrame) -> list[str]:
    """The device classes the runs trained on (one, for a grid that never mixes devices)."""
    return sorted(set(runs["device"])) if not runs.empty else []


def spread_table(plan: Plan, pilot: pd.DataFrame, averaging: pd.Series) -> pd.DataFrame:
    """The per-task spreads each comparison is sized with (points), as a table."""
    spreads = task_spreads(pilot)
    rows = {
        c.name: pilot_spread(c, plan.tasks, pilot, spreads, averaging) for c in plan.comparisons
    }
    return pd.DataFrame(rows).T.round(2).rename_axis("comparison")
