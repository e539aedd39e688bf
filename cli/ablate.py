"""llmasr ablate [--profile NAME] [--work-dir DIR] --vary KEY=V1,V2 | --variant NAME:KEY=V[,KEY=V]
[--name NAME] [--source URL_OR_PATH] [--yes] [--set KEY=VALUE]

Variants of a run trained and evaluated side by side (flows/ablate.py; stages equal across variants
train once), after every variant's config and models are checked, then the comparison table."""

from __future__ import annotations

import argparse

from cli import common
from llmasr import tables
from llmasr.tables import Col


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ablate",
        help=(
            "train and evaluate variants of a run side by side (stages equal across variants train once); "
            "<work_dir>/ablations/<name>/"
        ),
    )
    common.config_args(p)
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help=(
            "a grid key and its values, e.g. train.stage3.lr=1e-4,1e-5 "
            "(repeatable: every combination is a variant; train.* and eval.* keys)"
        ),
    )
    p.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=[],
        metavar="NAME:KEY=V[,KEY=V]",
        help=(
            "a hand-picked variant, e.g. linear:train.adapter=linear "
            "(repeatable; NAME: alone is the config as it is)"
        ),
    )
    p.add_argument(
        "--name",
        default=None,
        help=(
            "the ablation's folder under <work_dir>/ablations/ "
            "(default: the vary keys or the variants' names)"
        ),
    )
    common.sources_arg(
        p, "sources of the data stage, run once before any training (repeatable; default the config's)"
    )
    p.add_argument("--yes", action="store_true", help="run more than 16 variants")
    p.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    from flows.evaluate import check_test_sets
    from llmasr import preflight, progress
    from tasks import ablate

    # every variant's config, the sources, the test sets and the models, before Prefect starts
    plan = ablate.make_plan(
        args.vary,
        args.variants,
        args.name,
        args.yes,
        args.profile,
        args.work_dir,
        args.overrides,
        args.config_file,
        args.sources or None,
    )
    if plan.base.sources:
        preflight.check_sources(plan.base)
    check_test_sets(plan.base)
    preflight.check_scorable(plan.base)
    for i, cfg in enumerate(plan.configs.values()):
        common.check_models(
            cfg, label=i == 0 and bool(plan.base.sources), train_stages=[1, 2, 3], baselines=i == 0
        )
    common.prefect_defaults()
    from flows.ablate import ablation_flow

    with progress.terminal_progress(common.console):
        result = ablation_flow(vary=args.vary, variants=args.variants, name=args.name, profile=args.profile,
                               work_dir=args.work_dir, overrides=args.overrides, config_file=args.config_file,
                               sources=args.sources or None, yes=args.yes)  # fmt: skip
    cols = [Col(c, "right" if c.endswith("WER") else "left", keep=c in ("variant", "test set", "system"))
            for c in ("variant", "stage 1", "stage 2", "stage 3", "test set", "system",
                      "N-WER", "R-WER", "U-WER", "O-WER")]  # fmt: skip
    lineage = {
        v["name"]: [ablate.stage_cell(v["lineage"].get(f"stage{s}"), v["name"]) for s in ablate.STAGES]
        for v in result["variants"]
    }
    rows = [  # a baseline once, with no stages
        [
            row["variant"],
            *lineage.get(row["variant"], ["", "", ""]),
            row["test set"],
            row["system"],
            row["N-WER"],
            row["R-WER"],
            row["U-WER"],
            row["O-WER"],
        ]
        for row in ablate.result_rows(result)
    ]
    tables.show(common.console, f"ablation: {plan.out_dir}", cols, rows)
    common.console.print(
        f"comparison: {plan.out_dir / 'comparison.json'}; report: {plan.out_dir / 'report.md'}",
        soft_wrap=True,
    )
    common.print_browse_hint(args, plan.base)
    return 0
