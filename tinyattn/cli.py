"""The ``tinyattn`` command: ``params``, ``methods``, ``train`` (one run), ``study`` (a grid),
``reproduce`` (a profile rerun and compared with its records) and ``bench`` (cost of the methods)."""

from __future__ import annotations

import argparse
import json
import sys

from tinyattn.records import ANALYSIS_DIR, RUNS_DIR

# Method options that have their own flags; any other goes through --option KEY=VALUE.
_TINYATTN_FLAGS = {
    "head_dim": int,
    "experts": int,
    "placement": str,
    "combine": str,
    "context": str,
}


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _method_options(args) -> dict:
    options = {k: getattr(args, k) for k in _TINYATTN_FLAGS if getattr(args, k, None) is not None}
    for item in args.option or []:
        if "=" not in item:
            raise SystemExit(f"--option expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        options[key.replace("-", "_")] = _parse_value(value)
    return options


def _add_method_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method", default="tinyattn", help="a registered method (see `tinyattn methods`)"
    )
    parser.add_argument(
        "--backbone", default="minilm-l6", help="alias, HF model id or local folder"
    )
    parser.add_argument("--head-dim", dest="head_dim", type=int, help="tinyattn: d")
    parser.add_argument("--experts", type=int, help="tinyattn: E")
    parser.add_argument("--placement", help="tinyattn: after_attention | parallel_attention")
    parser.add_argument("--combine", help="tinyattn: mean | sequential")
    parser.add_argument("--context", help="tinyattn: full | self")
    parser.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="any other method option (value parsed as JSON when it can be)",
    )


def cmd_params(args) -> int:
    from tinyattn.inject import PREFIX, experts_averaged
    from tinyattn.methods import build_model
    from tinyattn.model import count_parameters, load_encoder

    encoder = load_encoder(args.backbone, weights=False)
    model = build_model(args.method, encoder, args.num_labels, _method_options(args))
    counts = {"backbone": args.backbone, "method": args.method, **count_parameters(model)}
    counts["method_options"] = model.method_options
    adapters = getattr(model, PREFIX, None)
    if adapters is not None:
        from tinyattn.adapter import paper_param_count

        layers = len(adapters.layers)
        cfg = adapters.config
        counts["paper_formula_adapter_params"] = layers * paper_param_count(
            encoder.config.hidden_size, cfg.head_dim, cfg.experts
        )
        if cfg.experts > 1:
            with experts_averaged(model):
                counts["deployed_adapter_params"] = count_parameters(model)["adapter_params"]
    if args.json:
        print(json.dumps(counts, indent=2))
    else:
        for key, value in counts.items():
            print(f"{key:32s} {value}")
    return 0


def cmd_methods(args) -> int:
    from tinyattn.methods import METHODS

    for name, method in METHODS.items():
        print(
            f"{name:12s} {method.description}\n{'':12s} defaults {method.defaults}\n"
            f"{'':12s} source: {method.source}"
        )
    return 0


def cmd_train(args) -> int:
    from tinyattn.experiment import RunParams, run

    params = RunParams(
        task=args.task,
        method=args.method,
        backbone=args.backbone,
        seed=args.seed,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        warmup_ratio=args.warmup_ratio,
        scheduler=args.scheduler,
        evals_per_epoch=args.evals_per_epoch,
        max_length=args.max_length,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        method_options=_method_options(args),
        two_stage=args.two_stage,
        data_dir=args.data_dir,
        out_dir=args.out,
        save_adapter=args.save_adapter,
        progress=not args.no_progress,
    )
    record, _ = run(params)
    best = record["best"]
    print(
        json.dumps(
            {
                "run_id": record["run_id"],
                "status": record["status"],
                "best": best["metrics"],
                "best_step": best["step"],
                "record": f"{args.out}/{record['run_id']}.json",
            },
            indent=2,
        )
    )
    return 0


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
        _require("papermill", "nbformat", "ipykernel")
    outcome = run_study(
        args.profile,
        out_dir=args.out,
        shard_spec=args.shard,
        retry_failed=args.retry_failed,
        jobs=args.jobs,
        executor=args.executor,
        time_limit=None if args.time_limit is None else args.time_limit * 60,
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

    _require("papermill", "nbformat", "ipykernel", "matplotlib")

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyattn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="count a method's parameters on a backbone")
    _add_method_flags(p)
    p.add_argument("--num-labels", dest="num_labels", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("methods", help="list the registered methods and their defaults")
    p.set_defaults(func=cmd_methods)

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
        choices=("notebook", "process"),
        default="notebook",
        help="run each run's notebook through papermill (default), or a plain Python process "
        "(for a machine without Jupyter, e.g. a GPU box)",
    )
    p.add_argument(
        "--time-limit",
        dest="time_limit",
        type=float,
        help="minutes: start no run after this long (the rest stay pending)",
    )
    p.add_argument(
        "--any-code",
        dest="any_code",
        action="store_true",
        help="a pinned profile: make its runs with this checkout's code even though it differs "
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
    p.add_argument(
        "--any-code",
        dest="any_code",
        action="store_true",
        help="a pinned profile: rerun with this checkout's code even though it differs from the pin",
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

    p = sub.add_parser("train", help="train one (task, method, seed) run and write its record")
    _add_method_flags(p)
    p.add_argument("--task", required=True)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=0.0)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", dest="max_steps", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    p.add_argument("--warmup-ratio", dest="warmup_ratio", type=float, default=0.0)
    p.add_argument("--scheduler", default="linear")
    p.add_argument("--evals-per-epoch", dest="evals_per_epoch", type=int, default=1)
    p.add_argument("--max-length", dest="max_length", type=int, default=128)
    p.add_argument("--max-train-samples", dest="max_train_samples", type=int)
    p.add_argument("--max-eval-samples", dest="max_eval_samples", type=int)
    p.add_argument(
        "--two-stage",
        dest="two_stage",
        action="store_true",
        help="tinyattn, E > 1: start the experts from the trained E=1 twin (trained first if its "
        "adapter is not saved under OUT/adapters)",
    )
    p.add_argument(
        "--data-dir",
        dest="data_dir",
        help="local GLUE folder (default: $TINYATTN_DATA_DIR, else the Hugging Face Hub)",
    )
    p.add_argument("--out", default=RUNS_DIR, help="folder for the run record")
    p.add_argument(
        "--save-adapter",
        dest="save_adapter",
        action="store_true",
        help="also save the trained adapter under OUT/adapters/RUN_ID",
    )
    p.add_argument("--no-progress", dest="no_progress", action="store_true")
    p.set_defaults(func=cmd_train)
    return parser


def _require(*modules: str) -> None:
    """Before any work starts: a ``ModuleNotFoundError`` for the first of ``modules`` not installed
    (``main`` turns it into the line that names the extra)."""
    import importlib.util

    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


#: What the ``study`` extra adds to the core install (pyproject.toml): a command that imports one of
#: these without it says which extra to install.
STUDY_EXTRA = ("papermill", "nbformat", "ipykernel", "matplotlib", "seaborn", "adapters")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ModuleNotFoundError as err:
        if err.name not in STUDY_EXTRA:
            raise
        print(
            f"tinyattn {args.command}: error: this command needs the study's packages ({err.name} is "
            "not installed): pip install 'tinyattn[study]'",
            file=sys.stderr,
        )
        return 2
    except (ValueError, TypeError, FileNotFoundError, NotImplementedError) as err:
        # TuningIncompleteError is a ValueError: a study whose learning rates are not chosen yet
        print(f"tinyattn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
