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
    from flows.ablate import check_plan
    from llmasr import progress
    from tasks import ablate

    # every variant's config, the sources, the test sets and the models, before Prefect starts
    base = common.load(args, args.sources)
    plan = ablate.make_plan(base, args.vary, args.variants, args.name, args.yes)
    check_plan(plan, common.warn)
    common.prefect_defaults()
    from flows.ablate import ablation_flow

    with progress.terminal_progress(common.console):
        result = ablation_flow(
            vary=args.vary, variants=args.variants, name=args.name, yes=args.yes, config=base
        )
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
