"""llmasr run [--profile NAME] [--source URL_OR_PATH] [--work-dir DIR] [--stages 1,2,3]
[--test-set NAME=PATH] [--baseline KIND:MODEL] [--hyps NAME=PATH] [--greedy] [--refresh] [--set KEY=VALUE]

The whole pipeline (flows/pipeline.py: data -> train -> evaluate), after everything that can be
checked before hours of labelling and training is checked, then the WER table."""

from __future__ import annotations

import argparse

from cli import common


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="the full pipeline: data -> train -> evaluate (ends with the WER table)")
    common.config_args(p)
    common.sources_arg(p, "YouTube URL, folder, audio file or manifest (repeatable)")
    p.add_argument("--stages", default="1,2,3", help="training stages to run (default 1,2,3)")
    common.test_sets_arg(p)
    p.add_argument(
        "--baseline",
        dest="baselines",
        action="append",
        default=[],
        metavar="faster-whisper:MODEL|transformers:MODEL",
        help="a Whisper baseline, faster-whisper:MODEL or transformers:MODEL (repeatable)",
    )
    common.hyps_arg(p)
    p.add_argument(
        "--greedy", action="store_true", help="greedy decoding in the evaluation (eval.num_beams=1)"
    )
    p.add_argument(
        "--refresh",
        action="store_true",
        help=(
            "ignore the data flow's cached task results and decode the test sets again "
            "(training redoes only what changed)"
        ),
    )
    p.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    from flows.config import eval_values
    from llmasr import progress

    args.overrides = [*args.overrides, *(["eval.num_beams=1"] if args.greedy else [])]
    stages = common.parse_stages(args.stages)
    values = eval_values(args.test_sets or None, args.baselines or None, args.hyps or None)
    cfg = common.load(args, args.sources, values=values)
    # everything that can be checked before hours of labelling and training: sources, test sets
    # (each with something to score), hypothesis files, the models; what the profile generates (the
    # demo's corpus and its test set) is checked once it exists
    common.check(cfg, data=True, train_stages=stages, zipformer=True, evaluate=True)
    common.prefect_defaults()
    from flows.pipeline import pipeline_flow

    with progress.terminal_progress(common.console):
        result = pipeline_flow(stages=stages, refresh=args.refresh, config=cfg)
    common.print_eval_table(result["eval"])
    common.print_browse_hint(args, cfg)
    return 0
