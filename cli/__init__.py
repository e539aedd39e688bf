"""llmasr COMMAND [options]: the command line, above the flows (it imports flows/, llmasr/ and
tasks/; none of them imports it).  ``python -m cli COMMAND`` runs it without the installed script.

    llmasr data --profile demo                                     # CPU demo: espeak-ng corpus -> shards
    llmasr data --source https://www.youtube.com/@SomeChannel --work-dir runs/mine
    llmasr data --source /path/to/folder --work-dir runs/mine --set filter.max_caption_wer=0.15
    llmasr train --profile demo                                    # stages 1 -> 2 -> 3,
                                                                   # tiny models on the CPU
    llmasr train --work-dir runs/mine --stages 2,3 --set train.stage3.lr=2e-6
    llmasr evaluate --profile demo                                 # zero-shot R-WER report of the demo run
    llmasr run --profile demo                                      # all of it: data -> train -> evaluate
    llmasr ablate --profile demo --vary train.stage3.lr=0.01,0.001 # variants side by side,
                                                                   # shared stages trained once
    llmasr transcribe --work-dir runs/mine talk.mp3 recordings/    # your own audio
                                                                   # with the run's trained model
    llmasr transcribe --profile demo --out subs --format srt a.wav # .srt per file (txt, srt, jsonl)
    llmasr ui --profile demo                                       # Prefect UI on 127.0.0.1:4200
                                                                   # with the deployments
    llmasr demo-corpus                                             # only generate the demo corpus
                                                                   # (runs/demo/demo-corpus)
    llmasr config --profile demo                                   # print the validated config

One module per command (``cli/<command>.py``: its flags in ``add_parser``, its work in ``command``);
what they share is in ``cli/common.py``.  Every command validates the whole configuration (and the
sources) before any work and exits with status 2 and the offending key on a configuration error.
Modules import Prefect and the flows inside ``command`` only: Prefect reads its settings once, at
import, after ``main`` has set them.
"""

from __future__ import annotations

import argparse
import sys

from rich.markup import escape

from cli import ablate, common, config, data, demo_corpus, evaluate, run, train, transcribe, ui

# in the order ``llmasr --help`` lists them
COMMANDS = (data, train, evaluate, run, ablate, transcribe, ui, demo_corpus, config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmasr", description="Web audio -> pseudo-labelled shards -> LLM-ASR -> rare-word error rates"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from llmasr.config import ConfigError
    from llmasr.lock import WorkDirBusy
    from llmasr.server import ServerError
    from tasks.ingest import SourceError

    args = build_parser().parse_args(argv)
    common.prefect_defaults()  # before any import of prefect: its settings are read once, at import
    try:
        return args.handler(args)
    except (ConfigError, SourceError, ServerError, WorkDirBusy) as exc:
        # one line whatever the terminal's width (soft_wrap), the message as written (no rich markup)
        common.console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
