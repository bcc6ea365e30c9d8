"""The study's commands: ``study`` (a profile's grid), ``reproduce`` (a profile rerun and compared
with its records), ``analyse`` (the experts analysis) and ``bench`` (cost of the methods).

``tinyattn.cli`` adds them to the ``tinyattn`` command with ``add_commands``.
"""

from __future__ import annotations

import argparse
import json

from tinyattn.records import ANALYSIS_DIR, RUNS_DIR


def require(*modules: str) -> None:
    """Before any work starts: a ``ModuleNotFoundError`` for the first of ``modules`` not installed
    (``tinyattn.cli.main`` turns it into the line that names the extra)."""
    import importlib.util

    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def cmd_study(args) -> int:
    from tinyattn.study.runner import run_study
    from tinyattn.study.status import plan

    if args.dry_run:
        result = plan(args.profile, args.out, args.shard)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for row in result["runs"]:
                print(
                    f"{row['status']:15s} {row['task']:6s} {row['method']:14s} seed {row['seed']:<4} "
                    f"{row['run_id']}"
                )
            print(f"{result['counts']}; pending: about {result['estimated_cpu_hours']} CPU-hours")
        return 0
    if not args.any_code:
        _refuse_other_code(args)
    if args.executor == "notebook":
        require("papermill", "nbformat", "ipykernel")
    if args.executor == "ray":
        require("ray")
    elif args.address:
        raise ValueError("--address is for --executor ray")
    outcome = run_study(
        args.profile,
        out_dir=args.out,
        shard_spec=args.shard,
        retry_failed=args.retry_failed,
        jobs=args.jobs,
        executor=args.executor,
        time_limit=None if args.time_limit is None else args.time_limit * 60,
        address=args.address,
    )
    print(f"study {args.profile}: {outcome}")
    return 1 if outcome["failed"] else 0


def _refuse_other_code(args) -> None:
    """A pinned profile's pending runs are made from a checkout of its commit: a ``PinnedCodeError``
    when this checkout's training code differs from it (runs already recorded are not a reason)."""
    from tinyattn.study.profiles import load_profile
    from tinyattn.study.reproduce import PinnedCodeError, pin_problem
    from tinyattn.study.status import plan

    profile = load_profile(args.profile)
    if not profile.get("code"):
        return
    counts = plan(args.profile, args.out, args.shard)["counts"]
    if not (counts["pending"] or (args.retry_failed and counts["failed"])):
        return
    problem = pin_problem(profile)
    if problem:
        pin = profile["code"]
        raise PinnedCodeError(
            f"profile {profile['name']!r} is pinned (code: {pin}): its runs are made from a "
            f"checkout of that commit, and {problem}. Run it from such a checkout (git worktree add "
            f"<dir> {pin}; see 'Reproducing the records' in the README), or pass --any-code to "
            "make its runs with this checkout's code"
        )


def cmd_reproduce(args) -> int:
    import tempfile

    from tinyattn.study.reproduce import DEFAULT_TOLERANCE, format_summary, reproduce, write_summary

    into = args.into or tempfile.mkdtemp(prefix=f"tinyattn-reproduce-{args.profile}-")
    summary = reproduce(
        args.profile,
        into,
        runs=[r for r in (args.runs or "").split(",") if r],
        tolerance=DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance,
        records_dir=args.records,
        jobs=args.jobs,
        executor=args.executor,
        any_code=args.any_code,
    )
    print(format_summary(summary))
    if args.summary != "-" and (args.summary or not args.runs):  # a partial check: only if asked
        print(f"summary: {write_summary(summary, args.summary)}")
    return 0 if summary["passed"] else 1


def cmd_analyse(args) -> int:
    from tinyattn.study.runner import run_analyses

    require("papermill", "nbformat", "ipykernel", "matplotlib")

    done = run_analyses(
        args.profile, out_dir=args.out, analysis_dir=args.analysis, force=args.force
    )
    print(f"analysed {len(done)} run(s) of {args.profile}: {', '.join(done) or 'none pending'}")
    return 0


def cmd_bench(args) -> int:
    from tinyattn.records import git_commit, write_json_atomic
    from tinyattn.study.bench import run_benchmark

    if args.quick:
        settings = {"batch_size": 2, "lengths": (16,), "warmup": 1, "repeats": 2}
    else:
        settings = {
            "batch_size": args.batch_size,
            "lengths": tuple(args.lengths),
            "warmup": args.warmup,
            "repeats": args.repeats,
        }
    result = run_benchmark(
        backbone=args.backbone, threads=args.threads, weights=not args.random_weights, **settings
    )
    result["git"] = git_commit()
    if args.out:
        write_json_atomic(args.out, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key in ("train_step_ratio", "inference_ratio", "peak_memory_mb"):
            print(key)
            for name, value in result[key].items():
                print(f"  {name:20s} {value:8.3f}")
    return 0


def cmd_merge(args) -> int:
    import sys

    from tinyattn.study.merge import AGREEMENT_TOLERANCE, format_summary, merge

    tolerance = AGREEMENT_TOLERANCE if args.tolerance is None else args.tolerance
    report = merge(
        args.sources, args.into, dry_run=args.dry_run, tolerance=tolerance, any_code=args.any_code
    )
    for line in report.problems():
        print(f"tinyattn merge: {line}", file=sys.stderr)
    if args.verbose:
        for outcome in report.outcomes:
            if outcome.kind in ("new", "duplicate"):
                print(f"{outcome.kind}: {outcome.text}")
    print(format_summary(report))
    return 0 if report.ok else 1


def any_code_option(parser, help: str) -> None:
    """``--any-code`` (``args.any_code``): what accepting a pinned profile's other code means here."""
    parser.add_argument("--any-code", dest="any_code", action="store_true", help=help)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the study's commands to the ``tinyattn`` command's subparsers."""
    p = sub.add_parser(
        "study",
        help="run a study profile's grid, resumably (through papermill, or plain processes)",
    )
    p.add_argument(
        "--profile", required=True, help="profiles/<NAME>.yaml, or a path to a YAML file"
    )
    p.add_argument("--shard", help="K/N: run only this machine's share of the grid")
    p.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="list the runs and their status; run nothing",
    )
    p.add_argument("--json", action="store_true", help="with --dry-run: print one JSON object")
    p.add_argument("--retry-failed", dest="retry_failed", action="store_true")
    p.add_argument(
        "--jobs", type=int, default=1, help="runs at once (each gets cores/jobs threads)"
    )
    p.add_argument("--out", default=RUNS_DIR, help="folder of the run records")
    p.add_argument(
        "--executor",
        choices=("notebook", "process", "ray"),
        default="notebook",
        help="run each run's notebook through papermill (default), a plain Python process (for a "
        "machine without Jupyter, e.g. a GPU box), or a Ray task (a multi-GPU box, a cluster)",
    )
    p.add_argument(
        "--address",
        help="with --executor ray: the Ray cluster (auto: the one this machine is part of; default: "
        "a running local instance, else a new one)",
    )
    p.add_argument(
        "--time-limit",
        dest="time_limit",
        type=float,
        help="minutes: start no run after this long (the rest stay pending)",
    )
    any_code_option(
        p,
        "a pinned profile: make its runs with this checkout's code even though it differs "
        "from the pin",
    )
    p.set_defaults(func=cmd_study)

    p = sub.add_parser(
        "reproduce",
        help="rerun a profile's recorded runs into a fresh folder and compare each with its record",
    )
    p.add_argument("--profile", required=True, help="profiles/<NAME>.yaml, e.g. quick")
    p.add_argument(
        "--into", help="folder for the reruns (default: a new temporary folder); done runs are kept"
    )
    p.add_argument("--runs", help="LABEL,...: only these runs (profile labels, tasks or run ids)")
    p.add_argument(
        "--tolerance",
        type=float,
        help="largest |difference| allowed per metric, in its units (default 1e-4: 0.01 points)",
    )
    p.add_argument("--records", default=RUNS_DIR, help="folder of the committed records")
    p.add_argument("--jobs", type=int, default=1, help="runs at once")
    p.add_argument("--executor", choices=("notebook", "process"), default="notebook")
    any_code_option(
        p, "a pinned profile: rerun with this checkout's code even though it differs from the pin"
    )
    p.add_argument(
        "--summary",
        help="where to write the JSON summary (default, when every run is checked: "
        "results/reproduce/<profile>.json; - for none)",
    )
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser(
        "analyse", help="run the experts analysis notebook on a profile's trained 4-expert adapters"
    )
    p.add_argument("--profile", required=True, help="e.g. ablations")
    p.add_argument("--out", default=RUNS_DIR, help="folder of the run records")
    p.add_argument("--analysis", default=ANALYSIS_DIR, help="folder for the reports")
    p.add_argument("--force", action="store_true", help="redo runs analysed before")
    p.set_defaults(func=cmd_analyse)

    p = sub.add_parser("bench", help="training and inference cost of the methods, side by side")
    p.add_argument("--quick", action="store_true", help="a tiny configuration that runs in seconds")
    p.add_argument("--backbone", default="minilm-l6")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument(
        "--random-weights",
        dest="random_weights",
        action="store_true",
        help="build the backbone from its config alone (timings do not depend on the weights)",
    )
    p.add_argument("--out", help="also write the JSON here (e.g. results/bench/cpu.json)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "merge",
        help="merge folders of run records (or .zip files of them) from other machines into one",
    )
    p.add_argument(
        "sources", nargs="+", metavar="SRC", help="a folder of run records, or a .zip of one"
    )
    p.add_argument(
        "--into", default=RUNS_DIR, help="the runs folder to merge into (no file there is replaced)"
    )
    p.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="say what would happen; write nothing",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        help="largest |difference| of a best or final metric for two records of a run to agree "
        "(default 1e-4)",
    )
    p.add_argument(
        "--verbose", action="store_true", help="also list each run copied or already there"
    )
    any_code_option(
        p, "accept records of a pinned profile made with other training code than its pin's"
    )
    p.set_defaults(func=cmd_merge)
