"""llmasr data --profile demo | --source URL_OR_PATH [--work-dir DIR] [--set KEY=VALUE] [--refresh]

The data flow (flows/data.py: ingest -> segment -> label -> filter -> shard), after the sources and
the labeller are checked, then its summary and filter funnel as tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.text import Text

from cli import common
from llmasr import tables
from llmasr.tables import Col


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="run the data flow: ingest -> segment -> label -> filter -> shard")
    common.config_args(p)
    common.sources_arg(p, "YouTube URL, folder, audio file or manifest (repeatable)")
    p.add_argument(
        "--refresh", action="store_true", help="ignore cached task results (after deleting outputs by hand)"
    )
    p.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    from llmasr import progress

    cfg = common.load(args, args.sources)
    common.check(cfg, data=True)  # a bad source or manifest row fails here, before Prefect starts
    common.prefect_defaults()
    from flows.data import data_flow

    runner_flow = data_flow.with_options(task_runner=common.task_runner(cfg))
    with progress.terminal_progress(common.console):
        result = runner_flow(refresh=args.refresh, config=cfg)
    print_summary(cfg.work_dir, result)
    common.print_browse_hint(args, cfg)
    return 0


def label_rtfx_cell(result) -> str:
    """The data summary's label RTFx: "cached" when every label came from an earlier run."""
    if result.labelled_items:
        return f"{result.label_rtfx:.1f}"
    return "cached" if result.segments else "-"


def print_summary(work_dir: str, result) -> None:
    """The data run's counts and the filter funnel (what each rule dropped)."""
    from llmasr.layout import WorkLayout
    from llmasr.records import Decision, read_records
    from tasks.summary import funnel

    layout = WorkLayout(Path(work_dir))
    cols = [Col(c) for c in ("items", "failed", "segments", "kept", "shards", "labelled now", "label RTFx")]
    counts = (
        result.items,
        result.failed_items,
        result.segments,
        result.kept,
        result.shards,
        result.labelled_items,
        label_rtfx_cell(result),
    )
    tables.show(common.console, f"data run: {layout.root}", cols, [list(map(str, counts))])
    rows = [
        [row["reason"], row["segments"], row["only_reason"]]
        for row in funnel(read_records(layout.decisions, Decision))
    ]
    tables.show(
        common.console,
        "filter funnel",
        [Col("reason", "left", keep=True), Col("segments"), Col("only reason")],
        rows,
    )
    common.console.print(Text(f"shards: {layout.shard_index}"), soft_wrap=True)
