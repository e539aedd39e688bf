"""The ``llmasr`` command.

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

Every subcommand validates the whole configuration (and the sources) before any work and exits
with status 2 and the offending key on a configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from llmasr import tables
from llmasr.tables import Col

console = Console(stderr=True)


def _config_args(p: argparse.ArgumentParser) -> None:
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


def _hyps_arg(p: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmasr", description="Web audio -> pseudo-labelled shards -> LLM-ASR -> rare-word error rates"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="run the data flow: ingest -> segment -> label -> filter -> shard")
    _config_args(data)
    data.add_argument(
        "--source",
        dest="sources",
        action="append",
        default=[],
        help="YouTube URL, folder, audio file or manifest (repeatable)",
    )
    data.add_argument(
        "--refresh", action="store_true", help="ignore cached task results (after deleting outputs by hand)"
    )

    train = sub.add_parser("train", help="run the training flow: stage 1 -> 2 -> 3 on the work dir's shards")
    _config_args(train)
    train.add_argument(
        "--stages", default="1,2,3", help="comma-separated stages to run, e.g. 2,3 (default 1,2,3)"
    )

    evaluate = sub.add_parser(
        "evaluate", help="run the evaluation flow: decode test sets, score O/N/R/U-WER, write eval/report.md"
    )
    _config_args(evaluate)
    evaluate.add_argument(
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
    evaluate.add_argument(
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
    _hyps_arg(evaluate)
    evaluate.add_argument(
        "--stages",
        default=None,
        help=(
            "stage checkpoints to decode, e.g. 3 (default eval.stages: 1,2,3 where complete; "
            "1 = Whisper with the stage-1 encoder)"
        ),
    )
    evaluate.add_argument("--greedy", action="store_true", help="greedy decoding (eval.num_beams=1)")
    evaluate.add_argument(
        "--refresh", action="store_true", help="decode again even where cached hypotheses match"
    )

    run = sub.add_parser("run", help="the full pipeline: data -> train -> evaluate (ends with the WER table)")
    _config_args(run)
    run.add_argument(
        "--source",
        dest="sources",
        action="append",
        default=[],
        help="YouTube URL, folder, audio file or manifest (repeatable)",
    )
    run.add_argument("--stages", default="1,2,3", help="training stages to run (default 1,2,3)")
    run.add_argument(
        "--test-set",
        dest="test_sets",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a test set (repeatable; replaces eval.test_sets)",
    )
    run.add_argument(
        "--baseline",
        dest="baselines",
        action="append",
        default=[],
        metavar="faster-whisper:MODEL|transformers:MODEL",
        help="a Whisper baseline, faster-whisper:MODEL or transformers:MODEL (repeatable)",
    )
    _hyps_arg(run)
    run.add_argument(
        "--greedy", action="store_true", help="greedy decoding in the evaluation (eval.num_beams=1)"
    )
    run.add_argument(
        "--refresh",
        action="store_true",
        help=(
            "ignore the data flow's cached task results and decode the test sets again "
            "(training redoes only what changed)"
        ),
    )

    ab = sub.add_parser(
        "ablate",
        help=(
            "train and evaluate variants of a run side by side (stages equal across variants train once); "
            "<work_dir>/ablations/<name>/"
        ),
    )
    _config_args(ab)
    ab.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help=(
            "a grid key and its values, e.g. train.stage3.lr=1e-4,1e-5 "
            "(repeatable: every combination is a variant; train.* and eval.* keys)"
        ),
    )
    ab.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=[],
        metavar="NAME:KEY=V[,KEY=V]",
        help=(
            "a hand-picked variant, e.g. linear:train.projector=linear "
            "(repeatable; NAME: alone is the config as it is)"
        ),
    )
    ab.add_argument(
        "--name",
        default=None,
        help=(
            "the ablation's folder under <work_dir>/ablations/ "
            "(default: the vary keys or the variants' names)"
        ),
    )
    ab.add_argument(
        "--source",
        dest="sources",
        action="append",
        default=[],
        help="sources of the data stage, run once before any training (repeatable; default the config's)",
    )
    ab.add_argument("--yes", action="store_true", help="run more than 16 variants")

    tr = sub.add_parser(
        "transcribe", help="transcribe your own audio files with the run's trained model (stage 3, 2 or 1)"
    )
    _config_args(tr)
    tr.add_argument(
        "paths",
        nargs="+",
        metavar="FILE_OR_FOLDER",
        help="audio files of any length and format ffmpeg reads; folders are walked for audio files",
    )
    tr.add_argument(
        "--stage",
        type=int,
        choices=[1, 2, 3],
        default=None,
        help=(
            "3: LLM-ASR with LoRA, 2: without LoRA, 1: Whisper with the stage-1 encoder "
            "(default: the highest complete stage)"
        ),
    )
    tr.add_argument(
        "--out", default=None, metavar="DIR", help="write files there instead of printing the text"
    )
    tr.add_argument(
        "--format",
        choices=["txt", "srt", "jsonl"],
        default=None,
        help=(
            "with --out: <stem>.txt, <stem>.srt (a cue per VAD piece) or one transcripts.jsonl (default txt)"
        ),
    )
    beams = tr.add_mutually_exclusive_group()
    beams.add_argument("--greedy", action="store_true", help="greedy decoding (eval.num_beams=1)")
    beams.add_argument(
        "--num-beams", type=int, default=None, metavar="N", help="beam width (default eval.num_beams)"
    )

    ui = sub.add_parser("ui", help="a Prefect server on 127.0.0.1:4200 serving the project's deployments")
    _config_args(ui)
    ui.add_argument(
        "--host",
        default="127.0.0.1",
        help="bind address (default loopback; anything else is reachable from other machines)",
    )
    ui.add_argument("--port", type=int, default=4200, help="port of the UI and API (default 4200)")
    ui.add_argument(
        "--source",
        dest="sources",
        action="append",
        default=[],
        help="default sources of the data deployment (repeatable)",
    )

    demo = sub.add_parser(
        "demo-corpus",
        help="generate the espeak-ng demo corpus (or, with --profile small, the small profile's)",
    )
    demo.add_argument(
        "--profile",
        default=None,
        help=(
            "generate the corpus of this profile's demo: section "
            "(default demo; or small); --out, --items, --seed override it"
        ),
    )
    demo.add_argument("--config", dest="config_file", default=None, help="another pipeline_config.yaml")
    demo.add_argument(
        "--out",
        default=None,
        help="the corpus folder (default: the profile's demo.corpus_dir, <work_dir>/demo-corpus)",
    )
    demo.add_argument("--items", type=int, default=None, help="videos in the corpus (default: demo.n_items)")
    demo.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of voices, sentences and caption faults (default: demo.seed)",
    )
    demo.add_argument("--force", action="store_true", help="regenerate even if it exists")

    show = sub.add_parser("config", help="print the validated configuration")
    _config_args(show)
    return parser


def _load(args: argparse.Namespace, sources: list[str] | None = None):
    from llmasr.config import load_config

    return load_config(
        args.profile, args.overrides, args.config_file, work_dir=args.work_dir, sources=sources or None
    )


def _prefect_defaults() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect waits 20 s for the temporary server a run starts without PREFECT_API_URL; on a busy
    # 2-core laptop it can take longer, and the run then dies before any work: wait up to 2 min
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _check_models(cfg, label: bool = False, train_stages=(), baselines: bool = False) -> None:
    """The models the command will load, before Prefect starts (``llmasr.preflight``); a large
    labeller bound for the CPU is a warning."""
    from llmasr import preflight

    warning = preflight.label_device_warning(cfg) if label else None
    if warning:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)
    preflight.check_models(
        preflight.model_refs(cfg, label=label, train_stages=train_stages, baselines=baselines)
    )


def _print_browse_hint(args: argparse.Namespace, cfg) -> None:
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


def cmd_data(args: argparse.Namespace) -> int:
    from llmasr import preflight, progress

    cfg = _load(args, args.sources)
    preflight.check_sources(cfg)  # a bad source or manifest row fails here, before Prefect starts
    _check_models(cfg, label=True)
    _prefect_defaults()
    from flows.data import data_flow

    runner_flow = data_flow.with_options(task_runner=_task_runner(cfg))
    with progress.terminal_progress(console):
        result = runner_flow(
            sources=args.sources or None,
            profile=args.profile,
            work_dir=args.work_dir,
            overrides=args.overrides,
            config_file=args.config_file,
            refresh=args.refresh,
        )
    _print_summary(cfg.work_dir, result)
    _print_browse_hint(args, cfg)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    stages = _stages(args.stages)
    from flows.train import check_stages, train_flow
    from llmasr.layout import WorkLayout

    cfg = _load(args)
    check_stages(cfg, WorkLayout(Path(cfg.work_dir)), sorted(stages))  # before Prefect starts
    _check_models(cfg, train_stages=stages)
    _prefect_defaults()

    result = train_flow(
        profile=args.profile,
        work_dir=args.work_dir,
        overrides=args.overrides,
        config_file=args.config_file,
        stages=stages,
    )
    from flows.train_artifacts import read_metrics, summary_rows
    from tasks.checkpoints import stage_dir

    root = Path(cfg.work_dir).resolve()
    rows = summary_rows(
        read_metrics(WorkLayout(root)),
        {int(name.removeprefix("stage")): info for name, info in result.items()},
    )
    cols = [
        *map(
            Col,
            (
                "stage",
                "steps",
                "samples",
                "loss",
                "val loss",
                "samples/s",
                "tokens/s",
                "model TFLOP/s",
                "MFU",
            ),
        ),
        Col("checkpoint", "left", keep=True),
    ]
    fmt = lambda v, f="{}": "-" if v is None else f.format(v)  # noqa: E731
    cells = [  # the last log window of each stage (train.jsonl), as the train-summary artifact
        [str(r["stage"]), fmt(r["steps"]), fmt(r["samples"]), fmt(r["final_loss"], "{:.4f}"),
         fmt(r["val_loss"], "{:.4f}"), fmt(r["samples_per_s"], "{:.1f}"), fmt(r["tokens_per_s"], "{:.0f}"),
         fmt(r["model_tflops"], "{:.3g}"), fmt(r["mfu"], "{:.1%}"), str(stage_dir(root, r["stage"]))]
        for r in rows
    ]  # fmt: skip
    tables.show(console, f"training: {root}", cols, cells)
    _print_browse_hint(args, cfg)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    stages = None if args.stages is None else _stages(args.stages)
    overrides = [*args.overrides, *(["eval.num_beams=1"] if args.greedy else [])]
    params = dict(
        profile=args.profile,
        work_dir=args.work_dir,
        overrides=overrides,
        config_file=args.config_file,
        test_sets=args.test_sets or None,
        baselines=args.baselines or None,
        hyps=args.hyps or None,
        stages=stages,
    )
    from flows.evaluate import check_request, resolve_config

    cfg = resolve_config(**params)
    check_request(cfg)  # before Prefect starts (a test set the demo generates is checked once it exists)
    _check_models(cfg, baselines=True)
    _prefect_defaults()
    from flows.evaluate import evaluate_flow
    from llmasr import progress

    with progress.terminal_progress(console):
        metrics = evaluate_flow(**params, refresh=args.refresh)
    _print_eval_table(metrics)
    _print_browse_hint(args, cfg)
    return 0


def _print_eval_table(metrics: dict) -> None:
    tables.show(console, *tables.eval_table(metrics))  # names whole at any width (llmasr.tables)
    if metrics["problems"]:
        report = escape(str(Path(metrics["work_dir"]) / "eval" / "report.md"))
        console.print(
            f"[yellow]{len(metrics['problems'])} problem(s)[/yellow]: see the Problems section of {report}",
            soft_wrap=True,
        )


def _stages(text: str) -> list[int]:
    from llmasr.config import ConfigError

    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--stages {text!r}: write stage numbers separated by commas, e.g. 2,3") from None


def cmd_run(args: argparse.Namespace) -> int:
    from flows.evaluate import check_test_sets, resolve_config
    from flows.train import check_stage_numbers
    from llmasr import preflight, progress

    args.overrides = [*args.overrides, *(["eval.num_beams=1"] if args.greedy else [])]
    cfg = _load(args, args.sources)
    stages = _stages(args.stages)
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
    _check_models(eval_cfg, label=True, train_stages=stages or [1, 2, 3], baselines=True)
    _prefect_defaults()
    from flows.pipeline import pipeline_flow

    with progress.terminal_progress(console):
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
    _print_eval_table(result["eval"])
    _print_browse_hint(args, cfg)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from flows.evaluate import check_test_sets
    from llmasr import preflight, progress
    from tasks import ablate

    # every variant's config, the sources, the test sets and the models, before Prefect starts
    plan = ablate.make_plan(
        args.vary,
        args.variants,
        args.name,
        args.yes,
        args.profile,
        args.work_dir,
        args.overrides,
        args.config_file,
        args.sources or None,
    )
    if plan.base.sources:
        preflight.check_sources(plan.base)
    check_test_sets(plan.base)
    preflight.check_scorable(plan.base)
    for i, cfg in enumerate(plan.configs.values()):
        _check_models(cfg, label=i == 0 and bool(plan.base.sources), train_stages=[1, 2, 3], baselines=i == 0)
    _prefect_defaults()
    from flows.ablate import ablation_flow

    with progress.terminal_progress(console):
        result = ablation_flow(vary=args.vary, variants=args.variants, name=args.name, profile=args.profile,
                               work_dir=args.work_dir, overrides=args.overrides, config_file=args.config_file,
                               sources=args.sources or None, yes=args.yes)  # fmt: skip
    cols = [Col(c, "right" if c.endswith("WER") else "left", keep=c in ("variant", "test set", "system"))
            for c in ("variant", "stage 1", "stage 2", "stage 3", "test set", "system",
                      "N-WER", "R-WER", "U-WER", "O-WER")]  # fmt: skip
    lineage = {
        v["name"]: [ablate.stage_cell(v["lineage"].get(f"stage{s}"), v["name"]) for s in ablate.STAGES]
        for v in result["variants"]
    }
    rows = [  # a baseline once, with no stages
        [
            row["variant"],
            *lineage.get(row["variant"], ["", "", ""]),
            row["test set"],
            row["system"],
            row["N-WER"],
            row["R-WER"],
            row["U-WER"],
            row["O-WER"],
        ]
        for row in ablate.result_rows(result)
    ]
    tables.show(console, f"ablation: {plan.out_dir}", cols, rows)
    console.print(
        f"comparison: {plan.out_dir / 'comparison.json'}; report: {plan.out_dir / 'report.md'}",
        soft_wrap=True,
    )
    _print_browse_hint(args, plan.base)
    return 0


def cmd_transcribe(args: argparse.Namespace) -> int:
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
    cfg = _load(args)
    tr.check_output(args.out, args.format)  # every check before the model loads
    stage = tr.choose_stage(cfg.work_dir, args.stage)
    files = tr.find_audio(args.paths)
    with progress.terminal_progress(console) if len(files) > 1 else contextlib.nullcontext():
        result = tr.transcribe(files, cfg, stage)
    if args.out:
        written = tr.write_outputs(result.records, args.out, args.format or "txt")
        console.print(Text(f"wrote {len(written)} file(s) to {args.out}"), soft_wrap=True)
    else:
        print(tr.stdout_text(result.records))
    console.print(tr.summary(result), soft_wrap=True)
    for r in result.failed:
        console.print(f"[yellow]warning:[/yellow] {escape(f'{r.path}: {r.error}')}", soft_wrap=True)
    return 1 if result.failed else 0


def cmd_ui(args: argparse.Namespace) -> int:
    import signal

    from llmasr import server

    cfg = _load(args, args.sources)
    # Ctrl-C stops us even when started with SIGINT ignored (`&`)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _prefect_defaults()
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


def _task_runner(cfg):
    from flows.runners import flow_task_runner

    return flow_task_runner(cfg.runner)


def _label_rtfx_cell(result) -> str:
    """The data summary's label RTFx: "cached" when every label came from an earlier run."""
    if result.labelled_items:
        return f"{result.label_rtfx:.1f}"
    return "cached" if result.segments else "-"


def _print_summary(work_dir: str, result) -> None:
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
        _label_rtfx_cell(result),
    )
    tables.show(console, f"data run: {layout.root}", cols, [list(map(str, counts))])
    rows = [
        [row["reason"], row["segments"], row["only_reason"]]
        for row in funnel(read_records(layout.decisions, Decision))
    ]
    tables.show(
        console,
        "filter funnel",
        [Col("reason", "left", keep=True), Col("segments"), Col("only reason")],
        rows,
    )
    console.print(Text(f"shards: {layout.shard_index}"), soft_wrap=True)


def cmd_demo_corpus(args: argparse.Namespace) -> int:
    from llmasr.config import DemoConfig, load_config
    from tasks.demo_corpus import generate_corpus

    # corpus_dir resolved under its work dir
    demo = load_config(args.profile or "demo", config_file=args.config_file).demo
    if demo is None:
        raise SystemExit(f"profile {args.profile!r} has no demo: section (no corpus to generate)")
    update = {k: v for k, v in (("n_items", args.items), ("seed", args.seed)) if v is not None}
    demo = DemoConfig.model_validate({**demo.model_dump(), **update})
    out = generate_corpus(demo, out=args.out, force=args.force)
    console.print(Text(f"demo corpus in {out}"), soft_wrap=True)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    print(yaml.safe_dump(_load(args).model_dump(mode="json"), sort_keys=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    from llmasr.config import ConfigError
    from llmasr.lock import WorkDirBusy
    from llmasr.server import ServerError
    from tasks.ingest import SourceError

    args = build_parser().parse_args(argv)
    _prefect_defaults()  # before any import of prefect: its settings are read once, at import
    handler = {
        "data": cmd_data,
        "train": cmd_train,
        "evaluate": cmd_evaluate,
        "run": cmd_run,
        "ablate": cmd_ablate,
        "transcribe": cmd_transcribe,
        "ui": cmd_ui,
        "demo-corpus": cmd_demo_corpus,
        "config": cmd_config,
    }[args.command]
    try:
        return handler(args)
    except (ConfigError, SourceError, ServerError, WorkDirBusy) as exc:
        # one line whatever the terminal's width (soft_wrap), the message as written (no rich markup)
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
