"""What every ``llmasr`` command shares: the console, the config flags, loading and checking the
configuration before Prefect starts (the flow then gets it whole: ``flows/config.py``), and the
closing hint on where to browse a run.

Output goes through ``common.console`` (looked up at each call, so a test can replace it)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from llmasr import tables

console = Console(stderr=True)


def config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", help="a profile of pipeline_config.yaml (e.g. demo)")
    p.add_argument("--config", dest="config_file", help="another pipeline_config.yaml")
    p.add_argument("--work-dir", help="where every stage writes (default: the config's work_dir)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. filter.max_caption_wer=0.15 (repeatable)",
    )


def sources_arg(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--source", dest="sources", action="append", default=[], help=help)


def test_sets_arg(p: argparse.ArgumentParser) -> None:
    """--test-set, shared by evaluate and run."""
    p.add_argument(
        "--test-set",
        dest="test_sets",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help=(
            "a test set: manifest, Kincaid46 tsv, Primock57 folder, audio + .txt folder "
            "(repeatable; replaces eval.test_sets)"
        ),
    )


def hyps_arg(p: argparse.ArgumentParser) -> None:
    """--hyps, shared by evaluate and run."""
    p.add_argument(
        "--hyps",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help=(
            "a hypothesis file scored as a system: jsonl/tsv of utt_id and text, "
            "or icefall recogs-*.txt (repeatable)"
        ),
    )


def load(args: argparse.Namespace, sources: list[str] | None = None, values: dict | None = None):
    """The run's one configuration: the file, ``--profile``, ``--work-dir``, ``sources`` and the
    ``--set`` overrides, then ``values`` (a command's own lists, ``llmasr.config.with_overrides``)."""
    from llmasr.config import load_config, with_overrides

    cfg = load_config(
        args.profile, args.overrides, args.config_file, work_dir=args.work_dir, sources=sources or None
    )
    return with_overrides(cfg, values=values) if values else cfg


def prefect_defaults() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect waits 20 s for the temporary server a run starts without PREFECT_API_URL; on a busy
    # 2-core laptop it can take longer, and the run then dies before any work: wait up to 2 min
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def check(cfg, **plan) -> None:
    """``flows.config.check_before_work`` for what the command will run, before Prefect starts (one
    ``error:`` line on a problem); its warnings printed."""
    from flows.config import check_before_work

    check_before_work(cfg, warn, **plan)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


def parse_stages(text: str) -> list[int]:
    """``--stages 2,3`` as stage numbers."""
    from llmasr.config import ConfigError

    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--stages {text!r}: write stage numbers separated by commas, e.g. 2,3") from None


def task_runner(cfg):
    """The data flow's task runner for ``runner.kind`` (a thread pool, or Ray)."""
    from flows.runners import flow_task_runner

    return flow_task_runner(cfg.runner)


def print_browse_hint(args: argparse.Namespace, cfg) -> None:
    """Where this run's history and artifacts stay browsable once the command has ended."""
    import shlex

    api = os.environ.get("PREFECT_API_URL")
    if api:
        console.print(
            f"runs and artifacts: {api.removesuffix('/').removesuffix('/api')} "
            "(the Prefect server of PREFECT_API_URL)",
            soft_wrap=True,
        )
        return
    cmd = ["llmasr", "ui"]
    for flag, value in (
        ("--profile", args.profile),
        ("--config", args.config_file),
        ("--work-dir", args.work_dir and cfg.work_dir),
    ):
        if value:
            cmd += [flag, str(value)]
    console.print(
        f"browse this run, earlier ones and their artifacts: {shlex.join(cmd)} (then http://127.0.0.1:4200)",
        soft_wrap=True,
    )


def print_eval_table(metrics: dict) -> None:
    """The WER table of an evaluation (``llmasr evaluate``, ``llmasr run``) and where its problems are."""
    tables.show(console, *tables.eval_table(metrics))  # names whole at any width (llmasr.tables)
    if metrics["problems"]:
        report = escape(str(Path(metrics["work_dir"]) / "eval" / "report.md"))
        console.print(
            f"[yellow]{len(metrics['problems'])} problem(s)[/yellow]: see the Problems section of {report}",
            soft_wrap=True,
        )
