"""The few-shot chapter's numbers (claim C4): runs (from the records), floors (from the datasets
summary), published rows.

* ``scores(study)``: one row per finished run (task, method, seed, score = the reported val score x100);
* ``floors(tasks)``: each task's floors, from the evaluation set's label counts (the datasets
  summary): chance (a uniformly random guess: accuracy 1/K) and the evaluation set's majority class
  (the best any constant prediction scores); ``floors_table`` shows them with tiny attention's seeds
  above chance;
* ``summary(scores, floors)``: mean ± std over seeds per method and task, beside the floors;
* ``published()``: the GPT-3 / PET / iPET rows (Schick & Schütze 2021, Table 1, its dev block: the
  SuperGLUE validation set this project scores), per few-shot task;
* ``floor_sentence``: how many methods' means lie above chance and clear the majority class, per task;
* ``comparison`` and ``comparison_sentence``: tiny attention against the other methods of the
  substitute, under the book's declared analysis (``tinyattn.analysis.stats``);
* ``figure`` and ``opening``: the chapter's figure and first sentence;
* ``c4``: the verdict on C4, by ``C4_MARGIN`` against the published rows.

A few-shot task of the study (``fewrte``, ``fewcb``) is the FewGLUE task ``rte`` / ``cb`` of
``tinyattn.fewglue``; scores are on the main metric (RTE accuracy, CB the mean of accuracy and macro-F1).

The floors changed with issue 29: until then the one floor was the score of always predicting the
*training* set's majority class, which on FewGLUE RTE is the evaluation set's minority class, a
floor below chance; seeds were counted above it. They are now counted above chance,
and the evaluation set's majority class is shown beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from tinyattn.analysis import stats
from tinyattn.analysis.datasets_summary import SUMMARY_FILE, label_counts
from tinyattn.analysis.verdicts import PROVISIONAL
from tinyattn.fewglue import PUBLISHED, baseline_metrics, published_scores
from tinyattn.study.status import ProfileRuns
from tinyattn.tasks import FEWSHOT_TASKS

SCALE = 100.0


def scores(study: ProfileRuns) -> pd.DataFrame:
    """task, method (the profile's label), seed and score (the kept weights' val score x100)."""
    columns = ["run_id", "task", "method", "seed", "score"]
    if study.runs.empty:
        return pd.DataFrame(columns=columns)
    return study.runs.assign(score=study.runs["final_score"])[columns]


def floors(tasks: Iterable[str], path: str | Path = SUMMARY_FILE) -> dict[str, dict[str, float]]:
    """task -> its floors, from the evaluation set's label counts recorded in the datasets summary
    (``datasets_summary.label_counts``; the SuperGLUE validation set), in points:

    * ``chance``: the expected main-metric score of a uniformly random guess (``fewglue.baseline_metrics``),
      whose accuracy is ``chance_accuracy`` = 100 / K for K classes (``classes``);
    * ``dev_majority``: the main-metric score of always predicting the evaluation set's most frequent
      class, the highest any constant prediction reaches; that class's share of the evaluation set
      is ``dev_majority_share`` (its accuracy).

    On an accuracy task (RTE) the main-metric floors are the accuracies; CB's main metric also
    averages in macro-F1, so there they differ."""
    out: dict[str, dict[str, float]] = {}
    for task, counts in label_counts(list(tasks), "validation", path).items():
        spec = FEWSHOT_TASKS[task]
        gold = [label for label, n in sorted(counts.items()) for _ in range(n)]
        base = baseline_metrics(spec.hub_config, gold, gold)  # "training" labels = the dev set's
        out[task] = {
            "classes": spec.num_labels,
            "chance": SCALE * base["random"][spec.metric],
            "chance_accuracy": SCALE / spec.num_labels,
            "dev_majority": SCALE * base["majority"][spec.metric],
            "dev_majority_share": SCALE * max(counts.values()) / len(gold),
        }
    return out


def above_chance(scores: pd.Series, floor: Mapping[str, float]) -> int:
    """How many of ``scores`` (one per seed, main metric x100) lie above chance (``floor["chance"]``)."""
    return int((scores > floor["chance"]).sum())


def floors_table(
    table: pd.DataFrame, task_floors: dict[str, dict[str, float]], method: str
) -> pd.DataFrame:
    """Per task: the classes, chance and the evaluation set's majority class (as accuracy, and on the
    task's main metric where that is not accuracy), and how many of ``method``'s seeds lie above chance."""
    rows = {}
    for task in [t for t in FEWSHOT_TASKS if t in task_floors]:
        floor, metric = task_floors[task], FEWSHOT_TASKS[task].metric
        mine = table.loc[(table["task"] == task) & (table["method"] == method), "score"]
        main = "" if metric == "accuracy" else f" ({metric}: {{:.1f}})"
        rows[task] = {
            "classes": int(floor["classes"]),
            "chance, 1/K": f"{floor['chance_accuracy']:.1f}" + main.format(floor["chance"]),
            "dev majority class": f"{floor['dev_majority_share']:.1f}"
            + main.format(floor["dev_majority"]),
            f"{method}: seeds above chance": f"{above_chance(mine, floor)} of {len(mine)}",
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def summary(table: pd.DataFrame, task_floors: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Mean ± std over seeds (and the number of seeds) per method and task, then the two floors on
    the main metric: chance and the evaluation set's majority class."""
    rows = {}
    for (method, task), group in table.groupby(["method", "task"], sort=False):
        std = group["score"].std(ddof=1) if len(group) > 1 else float("nan")
        rows.setdefault(method, {})[task] = (
            f"{group['score'].mean():.1f} ± {std:.1f} ({len(group)})"
        )
    for name, key in (("chance", "chance"), ("dev majority class", "dev_majority")):
        rows[name] = {task: f"{values[key]:.1f}" for task, values in task_floors.items()}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    return frame[[t for t in FEWSHOT_TASKS if t in frame.columns]]


WITHHELD = "withheld"  # transcribed, not yet checked against the paper


def published() -> dict[str, dict[str, float]]:
    """few-shot task -> {system: published main-metric score}, from Table 1's block on the split this
    project scores (``PUBLISHED["compared"]``: dev, the SuperGLUE validation set); empty while the
    transcribed values are unchecked (``PUBLISHED["checked"]``), so nothing is decided against them."""
    if not PUBLISHED["checked"]:
        return {}
    by_fewglue = published_scores()
    return {name: by_fewglue[spec.hub_config] for name, spec in FEWSHOT_TASKS.items()}


def published_table() -> pd.DataFrame:
    """The published rows as printed (``PUBLISHED["citation"]``), both blocks (system, split): RTE
    accuracy, CB accuracy and CB macro-F1 in columns of their own, and whether the block is the one
    compared with; the values read ``WITHHELD`` while they are unchecked."""
    checked = bool(PUBLISHED["checked"])
    rows = {}
    for block, systems in PUBLISHED["rows"].items():
        for system, tasks in systems.items():
            values = {
                "RTE acc.": tasks["rte"]["accuracy"],
                "CB acc.": tasks["cb"]["accuracy"],
                "CB F1": tasks["cb"]["f1_macro"],
            }
            rows[(system, PUBLISHED["splits"][block])] = {
                **{k: f"{v:.1f}" if checked else WITHHELD for k, v in values.items()},
                "compared": "yes" if block == PUBLISHED["compared"] else "no",
            }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.names = ["system", "split"]
    return table


def floor_sentence(table: pd.DataFrame, task_floors: dict[str, dict[str, float]]) -> str:
    """Per task: how many methods' means over seeds lie above chance, how many clear the evaluation
    set's majority class by more than ``stats.COLLAPSE_MARGIN`` points, and the best mean."""
    parts = []
    for task in [t for t in FEWSHOT_TASKS if t in task_floors]:
        means = table[table["task"] == task].groupby("method")["score"].mean()
        if means.empty:
            continue
        floor = task_floors[task]
        above = above_chance(means, floor)
        clear = int((means > floor["dev_majority"] + stats.COLLAPSE_MARGIN).sum())
        parts.append(
            f"on {task}, {above} of {len(means)} methods' means lie above chance "
            f"({floor['chance']:.1f}) and {clear} clear the dev set's majority class "
            f"({floor['dev_majority']:.1f}) by more than {stats.COLLAPSE_MARGIN:g} point (the best: "
            f"{means.idxmax()}, {means.max():.1f})"
        )
    text = "; ".join(parts)
    return f"{text[:1].upper()}{text[1:]}." if parts else ""


def comparison(
    table: pd.DataFrame,
    task_floors: dict[str, dict[str, float]],
    method: str,
    twins: Sequence[str] = (),
    without_collapsed: bool = False,
) -> pd.DataFrame:
    """``method`` minus every other method of the substitute, paired on (task, seed) and pooled,
    under the declared analysis: bootstrap interval, sign test, Holm over this family. ``twins``
    (tiny attention's own E = 4 twin: whether it adds to E = 1 is C2's question, not a competitor's)
    are left out; ``without_collapsed`` drops every pair that holds a run that collapsed
    (``collapsed``)."""
    if table.empty:
        return pd.DataFrame()
    family = [m for m in dict.fromkeys(table["method"]) if m != method and m not in twins]
    exclude = collapsed(table, task_floors) if without_collapsed else None
    return stats.declared_comparison(table, method, family, exclude=exclude)


def collapsed(table: pd.DataFrame, task_floors: dict[str, dict[str, float]]) -> pd.Series:
    """``stats.collapsed`` against each task's evaluation-set majority class (``dev_majority``): a run
    within ``stats.COLLAPSE_MARGIN`` points of the best constant prediction, or below the probe."""
    majority = {task: floor["dev_majority"] for task, floor in task_floors.items()}
    return stats.collapsed(table, majority, score="score")


def comparison_sentence(full: pd.DataFrame, clean: pd.DataFrame, collapsed: int, runs: int) -> str:
    """What the two comparisons (all runs; without collapsed ones) say, in two sentences."""

    def said(frame: pd.DataFrame) -> str:
        parts = []
        for outcome, text in (
            ("better", "resolvably better than"),
            ("worse", "resolvably worse than"),
        ):
            methods = frame.loc[frame["outcome"] == outcome, "method"].tolist()
            if methods:
                parts.append(f"{text} {', '.join(methods)}")
        rest = int(frame["outcome"].isin(["not resolved", "too few pairs"]).sum())
        if not parts:
            return f"not resolvably different from any of the {rest} other methods"
        if rest:
            parts.append(f"not resolved against the other {rest}")
        return "; ".join(parts)

    if full.empty:
        return "No pair of runs of the substitute can be compared yet."
    same = full.set_index("method")["outcome"].equals(clean.set_index("method")["outcome"])
    return (
        f"Within the substitute, tiny attention (E = 1) is {said(full)} (up to "
        f"{int(full['pairs'].max())} (task, seed) pairs per method; Holm over {len(full)} "
        f"comparisons). Without the {collapsed} of {runs} runs that collapsed, "
        + ("every outcome stays the same." if same else f"it is {said(clean)}.")
    )


def figure(table: pd.DataFrame, task_floors: dict[str, dict[str, float]], order: list[str]):
    """One panel per task: each method's scores (a dot per seed, a bar at the mean) in ``order``,
    the evaluation set's majority class (dashed) and chance (dotted) across."""
    import matplotlib.pyplot as plt

    tasks = [t for t in FEWSHOT_TASKS if t in set(table["task"])]
    fig, axes = plt.subplots(
        1, max(1, len(tasks)), figsize=(5.5 * max(1, len(tasks)), 4.2), squeeze=False
    )
    for ax, task in zip(axes[0], tasks):
        rows = table[table["task"] == task]
        names = [m for m in order if m in set(rows["method"])]
        means = rows.groupby("method")["score"].mean().reindex(names)
        ax.bar(range(len(names)), means.values, color="#c9d6e8")
        for i, name in enumerate(names):
            values = rows.loc[rows["method"] == name, "score"]
            ax.plot([i] * len(values), values, "o", color="#1f4e8c", ms=3)
        floor = task_floors[task]
        ax.axhline(floor["dev_majority"], ls="--", color="k", lw=1, label="dev majority class")
        ax.axhline(floor["chance"], ls=":", color="k", lw=1, label="chance")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(task)
        ax.set_ylabel("val score ×100")
    if tasks:
        axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def opening(
    headline: str,
    table: pd.DataFrame,
    task_floors: dict[str, dict[str, float]],
    method: str,
    authors_done: int,
) -> str:
    """The chapter's first sentence: the verdict's gist and its strongest number."""
    headline = headline[:1].upper() + headline[1:]
    mine = table[table["method"] == method]
    parts = [
        f"{rows.mean():.1f} on {task} (chance {task_floors[task]['chance']:.1f}; above it on "
        f"{above_chance(rows, task_floors[task])} of {len(rows)} seeds)"
        for task in FEWSHOT_TASKS
        if not (rows := mine.loc[mine["task"] == task, "score"]).empty
    ]
    if authors_done:
        return f"**{headline}** (the `fewglue` profile's runs against the published rows below)."
    offline = (
        "offline, with a classification head on MiniLM-L6, tiny attention scores "
        + " and ".join(parts)
        if parts
        else "no run of the offline substitute has finished yet"
    )
    return (
        f"**{headline}**: the authors' cloze protocol needs a masked-LM backbone that this offline "
        f"machine lacks; {offline}, a different protocol that cannot be set against GPT-3 or PET."
    )


# ----------------------------------------------------------------------------- C4 (few-shot)
#: C4's "comparable": tiny attention's mean over seeds no more than this many points below the lower of
#: GPT-3's and PET's published score on a task (fixed before any cloze run exists).
C4_MARGIN = 5.0
C4_DECIDING_RUN = (
    "the `fewglue` profile (ALBERT-xxlarge-v2 with its masked-LM head, the authors' cloze recipe; "
    "`tinyattn study --profile fewglue` on a GPU with Hub access, or notebooks/fewglue_colab.ipynb "
    "in Colab)"
)


def _as_accuracy(task: str, floor: Mapping[str, float]) -> str:
    """For a task whose main metric is not accuracy (CB): which score the floors are on, and the
    two floors as accuracies."""
    metric = FEWSHOT_TASKS[task].metric
    if metric == "accuracy":
        return ""
    return (
        f"its {metric} score; as accuracies {floor['chance_accuracy']:.1f} and "
        f"{floor['dev_majority_share']:.1f}; "
    )


def _spread(scores: pd.Series) -> str:
    return f"{scores.mean():.1f} ± {scores.std(ddof=1) if len(scores) > 1 else 0.0:.1f}"


def c4(
    offline: pd.DataFrame,
    baselines: Mapping[str, Mapping[str, float]],
    references: Mapping[str, Mapping[str, float]],
    cloze: pd.DataFrame | None = None,
    complete: bool = True,
    *,
    method: str,
) -> str:
    """The verdict on C4 (on FewGLUE, tiny attention is comparable to GPT-3 and PET).

    ``offline``: the substitute's runs (columns task, method, seed, score: the reported val score x100);
    ``baselines``: task -> its floors (``floors``: ``chance``, ``dev_majority``) on the same scale;
    the offline seeds are counted above chance; ``references``: task ->
    {"GPT-3": ..., "PET": ..., ...}, the published scores (Table 1's dev block, the split scored here;
    empty while they are unchecked, and then nothing is judged); ``cloze``: runs of the authors' protocol on a masked LM (same columns; ``method`` there is tiny attention's label).
    Without cloze runs the claim cannot be decided: the substitute is another protocol on another
    model. With them, each task is judged by ``C4_MARGIN`` against the lower of GPT-3 and PET, and
    ``complete`` says whether the cloze grid is finished (else the verdict is provisional); without
    them the verdict does not depend on how far the substitute has run.
    """
    prefix = "" if complete else PROVISIONAL + " "
    if cloze is None or cloze.empty:
        parts = []
        for task, rows in offline[offline["method"] == method].groupby("task", sort=True):
            floor = baselines[task]
            parts.append(
                f"{task} {_spread(rows['score'])} against chance {floor['chance']:.1f} and the dev "
                f"set's majority class {floor['dev_majority']:.1f} ({_as_accuracy(task, floor)}"
                f"above chance on {above_chance(rows['score'], floor)} of {len(rows)} seeds)"
            )
        seen = "gives tiny attention " + "; ".join(parts) if parts else "has no finished run yet"
        return (
            "**C4 cannot be decided here.** The claim is about the PET-style cloze protocol on "
            "a large masked LM (the authors: ALBERT-xxlarge-v2), compared with GPT-3 and PET; no run "
            "of that protocol is in the records, because the offline backbone has no masked-LM head "
            "and no hub can be reached. The offline substitute (a classification head on MiniLM-L6, "
            f"the same 32 examples) {seen}: a different protocol on a "
            "22 M-parameter encoder, which cannot say whether tiny attention matches GPT-3 or PET. "
            f"The run that decides it: {C4_DECIDING_RUN}."
        )
    if not references:
        return (
            f"{prefix}**C4 cannot be decided yet**: the published GPT-3 and PET rows it is judged "
            "against (Schick & Schütze 2021, Table 1) are transcribed but not yet checked against the "
            "paper, and this study decides nothing against an unchecked number."
        )
    missing = [t for t in sorted(references) if not _has_runs(cloze, t, method)]
    if missing:
        return (
            f"{prefix}**C4 cannot be decided yet**: no run of the cloze protocol on "
            f"{', '.join(missing)}. The run that decides it: {C4_DECIDING_RUN}."
        )
    close, below = [], []
    for task, ref in sorted(references.items()):
        rows = cloze[(cloze["task"] == task) & (cloze["method"] == method)]
        bar = min(ref["GPT-3"], ref["PET"])
        text = f"{task} {_spread(rows['score'])} (GPT-3 {ref['GPT-3']:.1f}, PET {ref['PET']:.1f})"
        (close if rows["score"].mean() >= bar - C4_MARGIN else below).append(text)
    caveat = (
        " Both sides are scores on the SuperGLUE validation set (Table 1's dev block of Schick & "
        "Schütze 2021); their test block is shown beside it."
    )
    if not below:
        return (
            f"{prefix}**C4 is supported**: within {C4_MARGIN:g} points of the lower of GPT-3 and "
            f"PET on every task: {'; '.join(close)}.{caveat}"
        )
    return (
        f"{prefix}**C4 is not supported**: more than {C4_MARGIN:g} points below the lower of GPT-3 "
        f"and PET on {'; '.join(below)}.{caveat}"
    )


def _has_runs(runs: pd.DataFrame, task: str, method: str) -> bool:
    return bool(((runs["task"] == task) & (runs["method"] == method)).any())
