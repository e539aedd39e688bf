"""llmasr demo-corpus [--profile demo|small] [--out DIR] [--items N] [--seed N] [--force]

Only generate a profile's espeak-ng corpus (tasks/demo_corpus.py; ``llmasr data --profile demo``
generates it too, before its data flow)."""

from __future__ import annotations

import argparse

from rich.text import Text

from cli import common


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo-corpus",
        help="generate the espeak-ng demo corpus (or, with --profile small, the small profile's)",
    )
    p.add_argument(
        "--profile",
        default=None,
        help=(
            "generate the corpus of this profile's demo: section "
            "(default demo; or small); --out, --items, --seed override it"
        ),
    )
    p.add_argument("--config", dest="config_file", default=None, help="another pipeline_config.yaml")
    p.add_argument(
        "--out",
        default=None,
        help="the corpus folder (default: the profile's demo.corpus_dir, <work_dir>/demo-corpus)",
    )
    p.add_argument("--items", type=int, default=None, help="videos in the corpus (default: demo.n_items)")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of voices, sentences and caption faults (default: demo.seed)",
    )
    p.add_argument("--force", action="store_true", help="regenerate even if it exists")
    p.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    from llmasr.config import DemoConfig, load_config
    from tasks.demo_corpus import generate_corpus

    # corpus_dir resolved under its work dir
    demo = load_config(args.profile or "demo", config_file=args.config_file).demo
    if demo is None:
        raise SystemExit(
            f"profile {args.profile!r} has no demo: section (no corpus to generate); "
            "use --profile demo or --profile small"
        )
    update = {k: v for k, v in (("n_items", args.items), ("seed", args.seed)) if v is not None}
    demo = DemoConfig.model_validate({**demo.model_dump(), **update})
    out = generate_corpus(demo, out=args.out, force=args.force)
    common.console.print(Text(f"demo corpus in {out}"), soft_wrap=True)
    return 0
