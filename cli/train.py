"""llmasr train [--profile NAME] [--work-dir DIR] [--stages 1,2,3] [--set KEY=VALUE]

The training flow (flows/train.py: stage 1 -> 2 -> 3 on the work dir's shards), after the stages
and the models are checked, then a table of each stage's last log window."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import common
from llmasr import tables
from llmasr.tables import Col


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="run the training flow: stage 1 -> 2 -> 3 on the work dir's shards")
    common.config_args(p)
    p.add_argument(
        "--stages", default="1,2,3", help="comma-separated stages to run, e.g. 2,3 (default 1,2,3)"
    )
    p.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    stages = common.parse_stages(args.stages)
    from flows.train import train_flow
    from llmasr.layout import WorkLayout

    cfg = common.load(args)
    common.check(cfg, train_stages=stages)  # the stages, the shards, the models: before Prefect starts
    common.prefect_defaults()

    result = train_flow(stages=stages, config=cfg)
    from flows.train_artifacts import read_metrics, summary_rows
    from tasks.checkpoints import stage_dir

    root = Path(cfg.work_dir).resolve()
    rows = summary_rows(
        read_metrics(WorkLayout(root)),
        {int(name.removeprefix("stage")): info for name, info in result.items()},
    )
    cols = [
        *map(
            Col,
            (
                "stage",
                "steps",
                "samples",
                "loss",
                "val loss",
                "samples/s",
                "tokens/s",
                "model TFLOP/s",
                "MFU",
            ),
        ),
        Col("checkpoint", "left", keep=True),
    ]
    fmt = lambda v, f="{}": "-" if v is None else f.format(v)  # noqa: E731
    cells = [  # the last log window of each stage (train.jsonl), as the train-summary artifact
        [str(r["stage"]), fmt(r["steps"]), fmt(r["samples"]), fmt(r["final_loss"], "{:.4f}"),
         fmt(r["val_loss"], "{:.4f}"), fmt(r["samples_per_s"], "{:.1f}"), fmt(r["tokens_per_s"], "{:.0f}"),
         fmt(r["model_tflops"], "{:.3g}"), fmt(r["mfu"], "{:.1%}"), str(stage_dir(root, r["stage"]))]
        for r in rows
    ]  # fmt: skip
    tables.show(common.console, f"training: {root}", cols, cells)
    common.print_browse_hint(args, cfg)
    return 0
