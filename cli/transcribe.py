"""llmasr transcribe [--profile NAME] [--work-dir DIR] [--stage 1|2|3] [--out DIR] [--format txt|srt|jsonl]
[--greedy | --num-beams N] FILE_OR_FOLDER...

Your own audio through the run's trained model (tasks/transcribe.py): the text on stdout, or files
under --out; exit status 1 when a file failed."""

from __future__ import annotations

import argparse

from rich.markup import escape
from rich.text import Text

from cli import common


def add_parser(sub) -> None:
    p = sub.add_parser(
        "transcribe", help="transcribe your own audio files with the run's trained model (stage 3, 2 or 1)"
    )
    common.config_args(p)
    p.add_argument(
        "paths",
        nargs="+",
        metavar="FILE_OR_FOLDER",
        help="audio files of any length and format ffmpeg reads; folders are walked for audio files",
    )
    p.add_argument(
        "--stage",
        type=int,
        choices=[1, 2, 3],
        default=None,
        help=(
            "3: LLM-ASR with LoRA, 2: without LoRA, 1: Whisper with the stage-1 encoder "
            "(default: the highest complete stage)"
        ),
    )
    p.add_argument(
        "--out", default=None, metavar="DIR", help="write files there instead of printing the text"
    )
    p.add_argument(
        "--format",
        choices=["txt", "srt", "jsonl"],
        default=None,
        help=(
            "with --out: <stem>.txt, <stem>.srt (a cue per VAD piece) or one transcripts.jsonl (default txt)"
        ),
    )
    beams = p.add_mutually_exclusive_group()
    beams.add_argument("--greedy", action="store_true", help="greedy decoding (eval.num_beams=1)")
    beams.add_argument(
        "--num-beams", type=int, default=None, metavar="N", help="beam width (default eval.num_beams)"
    )
    p.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    import contextlib

    from llmasr import progress
    from tasks import transcribe as tr

    beams = (
        ["eval.num_beams=1"]
        if args.greedy
        else [f"eval.num_beams={args.num_beams}"]
        if args.num_beams is not None
        else []
    )
    args.overrides = [*args.overrides, *beams]
    cfg = common.load(args)
    tr.check_output(args.out, args.format)  # every check before the model loads
    stage = tr.choose_stage(cfg.work_dir, args.stage)
    files = tr.find_audio(args.paths)
    with progress.terminal_progress(common.console) if len(files) > 1 else contextlib.nullcontext():
        result = tr.transcribe(files, cfg, stage)
    if args.out:
        written = tr.write_outputs(result.records, args.out, args.format or "txt")
        common.console.print(Text(f"wrote {len(written)} file(s) to {args.out}"), soft_wrap=True)
    else:
        print(tr.stdout_text(result.records))
    common.console.print(tr.summary(result), soft_wrap=True)
    for r in result.failed:
        common.console.print(f"[yellow]warning:[/yellow] {escape(f'{r.path}: {r.error}')}", soft_wrap=True)
    return 1 if result.failed else 0
