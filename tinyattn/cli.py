"""The ``tinyattn`` command: ``params``, ``methods`` and ``train`` (one run) here; ``study`` (a grid),
``reproduce`` (a profile rerun and compared with its records), ``analyse`` and ``bench`` (cost of the
methods) from the study's commands (``tinyattn.study.commands``)."""

from __future__ import annotations

import argparse
import json
import sys

from tinyattn.records import RUNS_DIR
from tinyattn.study.commands import add_commands

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

    add_commands(sub)

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


#: What the ``study`` extra adds to the core install (pyproject.toml): a command that imports one of
#: these without it says which extra to install.
STUDY_EXTRA = ("papermill", "nbformat", "ipykernel", "matplotlib", "seaborn", "adapters")
#: The other optional packages, and the extra that brings each.
EXTRAS = {name: "study" for name in STUDY_EXTRA} | {"ray": "ray"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ModuleNotFoundError as err:
        if err.name not in EXTRAS:
            raise
        extra = EXTRAS[err.name]
        print(
            f"tinyattn {args.command}: error: this command needs the {extra} extra's packages "
            f"({err.name} is not installed): pip install 'tinyattn[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except (ValueError, TypeError, FileNotFoundError, NotImplementedError) as err:
        # TuningIncompleteError is a ValueError: a study whose learning rates are not chosen yet
        print(f"tinyattn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
