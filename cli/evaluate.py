"""llmasr evaluate [--profile NAME] [--work-dir DIR] [--test-set NAME=PATH] [--baseline KIND:MODEL]
[--hyps NAME=PATH] [--stages 1,2,3] [--greedy] [--refresh] [--set KEY=VALUE]

The evaluation flow (flows/evaluate.py: decode the test sets, score O/N/R/U-WER, write
eval/report.md), after the test sets and models are checked, then the WER table."""

from __future__ import annotations

import argparse

from cli import common


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="run the evaluation flow: decode test sets, score O/N/R/U-WER, write eval/report.md"
    )
    common.config_args(p)
    common.test_sets_arg(p)
    p.add_argument(
        "--baseline",
        dest="baselines",
        action="append",
        default=[],
        metavar="faster-whisper:MODEL|transformers:MODEL",
        help=(
            "a Whisper baseline: faster-whisper:MODEL (e.g. faster-whisper:large-v2) "
            "or transformers:MODEL "
            "(e.g. transformers:openai/whisper-large-v2, transformers:bundled:whisper-base) "
            "(repeatable; replaces eval.baselines)"
        ),
    )
    common.hyps_arg(p)
    p.add_argument(
        "--stages",
        default=None,
        help=(
            "stage checkpoints to decode, e.g. 3 (default eval.stages: 1,2,3 where complete; "
            "1 = Whisper with the stage-1 encoder)"
        ),
    )
    p.add_argument("--greedy", action="store_true", help="greedy decoding (eval.num_beams=1)")
    p.add_argument("--refresh", action="store_true", help="decode again even where cached hypotheses match")
    p.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    stages = None if args.stages is None else common.parse_stages(args.stages)
    args.overrides = [*args.overrides, *(["eval.num_beams=1"] if args.greedy else [])]
    from flows.config import eval_values

    values = eval_values(args.test_sets or None, args.baselines or None, args.hyps or None, stages)
    cfg = common.load(args, values=values)
    # the test sets, the systems, the models: before Prefect starts (a test set the demo generates is
    # checked once it exists)
    common.check(cfg, evaluate=True)
    common.prefect_defaults()
    from flows.evaluate import evaluate_flow
    from llmasr import progress

    with progress.terminal_progress(common.console):
        metrics = evaluate_flow(refresh=args.refresh, config=cfg)
    common.print_eval_table(metrics)
    common.print_browse_hint(args, cfg)
    return 0
