"""llmasr config [--profile NAME] [--config FILE] [--work-dir DIR] [--set KEY=VALUE]

Print the validated configuration as YAML: every key, paths absolute."""

from __future__ import annotations

import argparse

from cli import common


def add_parser(sub) -> None:
    p = sub.add_parser("config", help="print the validated configuration")
    common.config_args(p)
    p.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    import yaml

    print(yaml.safe_dump(common.load(args).model_dump(mode="json"), sort_keys=False))
    return 0
