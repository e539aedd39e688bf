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
    from flows.evaluate import check_test_sets, resolve_config
    from flows.train import check_stage_numbers
    from llmasr import preflight, progress

    args.overrides = [*args.overrides, *(["eval.num_beams=1"] if args.greedy else [])]
    cfg = common.load(args, args.sources)
    stages = common.parse_stages(args.stages)
    # everything that can be checked before hours of labelling and training: stage numbers,
    # sources, test sets (each with something to score) and hypothesis files, then the models; what
    # the profile generates (the demo's corpus and its test set) is checked once it exists
    check_stage_numbers(sorted(stages or [1, 2, 3]))
    preflight.check_sources(cfg)
    eval_cfg = resolve_config(
        args.profile,
        args.work_dir,
        args.overrides,
        args.config_file,
        args.test_sets or None,
        args.baselines or None,
        args.hyps or None,
    )
    check_test_sets(eval_cfg)
    preflight.check_scorable(eval_cfg)
    common.check_models(eval_cfg, label=True, train_stages=stages or [1, 2, 3], baselines=True)
    common.prefect_defaults()
    from flows.pipeline import pipeline_flow

    with progress.terminal_progress(common.console):
        result = pipeline_flow(
            sources=args.sources or None,
            profile=args.profile,
            work_dir=args.work_dir,
            overrides=args.overrides,
            config_file=args.config_file,
            stages=stages,
            test_sets=args.test_sets or None,
            baselines=args.baselines or None,
            hyps=args.hyps or None,
            refresh=args.refresh,
        )
    common.print_eval_table(result["eval"])
    common.print_browse_hint(args, cfg)
    return 0
