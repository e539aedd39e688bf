"""llmasr ui [--profile NAME] [--work-dir DIR] [--host 127.0.0.1] [--port 4200] [--source URL_OR_PATH]

A Prefect server (or the one of $PREFECT_API_URL) serving the project's deployments
(flows/deployments.py) until Ctrl-C."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.text import Text

from cli import common


def add_parser(sub) -> None:
    p = sub.add_parser("ui", help="a Prefect server on 127.0.0.1:4200 serving the project's deployments")
    common.config_args(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="bind address (default loopback; anything else is reachable from other machines)",
    )
    p.add_argument("--port", type=int, default=4200, help="port of the UI and API (default 4200)")
    common.sources_arg(p, "default sources of the data deployment (repeatable)")
    p.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    import signal

    from llmasr import server

    console = common.console
    cfg = common.load(args, args.sources)
    # Ctrl-C stops us even when started with SIGINT ignored (`&`)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    common.prefect_defaults()
    proc = None
    api_url = os.environ.get("PREFECT_API_URL")
    try:
        if api_url:
            console.print(Text(f"using the Prefect server at {api_url} (PREFECT_API_URL)"), soft_wrap=True)
        else:
            if not server.is_loopback(args.host):
                console.print(
                    f"[yellow]warning:[/yellow] binding to {args.host}: the Prefect UI and API have no "
                    "authentication and will be reachable from other machines",
                    soft_wrap=True,
                )
            api_url = (
                f"http://{args.host if args.host not in ('0.0.0.0', '::') else '127.0.0.1'}:{args.port}/api"
            )
            log = Path(cfg.work_dir) / "logs" / "prefect-server.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            proc = server.start_server(args.host, args.port, log)
            console.print(Text(f"starting the Prefect server (log: {log}) ..."), soft_wrap=True)
            server.wait_healthy(api_url, proc)  # a timeout or Ctrl-C here still stops the server (finally)
            console.print(Text(f"Prefect UI: {api_url[:-4]}"), soft_wrap=True)
        from prefect import serve
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from flows.deployments import build_deployments

        with temporary_settings({PREFECT_API_URL: api_url}):
            serve(
                *build_deployments(
                    cfg, args.profile, args.work_dir, args.config_file, args.overrides, args.sources
                )
            )
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        if proc is not None:
            server.stop_server(proc)
    return 0
