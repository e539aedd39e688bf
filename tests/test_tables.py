"""The CLI's tables and error lines at 80 columns: names and paths whole, nothing wider than the
terminal, nothing hard-wrapped that a user would copy (llmasr.tables, cli/)."""

from __future__ import annotations

from io import StringIO

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

import cli
from cli import common
from llmasr import tables

SHORT = ["llmasr-stage3", "llmasr-stage2", "faster-whisper:large-v2", "hyp:icefall"]
LONG = [*SHORT, "transformers:openai/whisper-large-v2", "transformers:bundled:whisper-base"]


def metrics(systems: list[str], sets: tuple[str, ...] = ("primock57", "kincaid46")) -> dict:
    """The shape of evaluate_flow's result the table reads: a decoded system, a cached one, a
    hypothesis file (no RTF) and one that scored nothing."""

    def row(i: int, system: str) -> dict:
        if system.startswith("hyp:"):
            return {
                "utterances": 57,
                "n_wer": 0.25,
                "r_wer": 0.5,
                "u_wer": 0.1,
                "o_wer": 0.2,
                "rtf": None,
                "decode_s": None,
            }
        return {
            "utterances": 57,
            "n_wer": 0.1 * i,
            "r_wer": 1.0,
            "u_wer": None,
            "o_wer": 0.123,
            "rtf": 0.0456,
            "cached": i % 2 == 1,
        }

    kinds = {
        s: "hyps" if s.startswith("hyp:") else "llmasr" if s.startswith("llmasr") else "whisper"
        for s in systems
    }
    return {
        "work_dir": "/tmp/w",
        "systems": [{"name": s, "kind": kinds[s]} for s in systems],
        "results": {t: {s: row(i, s) for i, s in enumerate(systems)} for t in sets},
        "problems": [],
    }


def render(part_of_cli, width: int = 80) -> list[str]:
    buf = StringIO()
    part_of_cli(Console(width=width, file=buf, color_system=None))
    return buf.getvalue().splitlines()


@pytest.mark.parametrize("systems", [SHORT, LONG], ids=["short-names", "long-names"])
def test_the_wer_table_at_80_columns_keeps_every_name_whole(systems, monkeypatch):
    def print_table(console: Console) -> None:
        monkeypatch.setattr(common, "console", console)
        common.print_eval_table(metrics(systems))

    lines = render(print_table)
    assert lines[0] == "evaluation: /tmp/w/eval"
    assert max(cell_len(line) for line in lines) <= 80, "\n".join(lines)
    for name in [*systems, "primock57", "kincaid46"]:
        assert any(name in line for line in lines), (name, "\n".join(lines))
    text = "\n".join(lines)
    assert "…" not in text and "100.0%" in text and "n/a (hyp" in text and "0.046" in text


def test_each_layout_in_turn_boxed_compact_listing():
    title, columns, rows = tables.eval_table(metrics(SHORT))
    wide = tables.layout(title, columns, rows, 200)
    assert isinstance(wide[1], Table) and wide[1].box is tables.BOXED["box"]
    compact = tables.layout(title, columns, rows, 80)
    assert isinstance(compact[1], Table) and compact[1].box is tables.COMPACT["box"]
    title, columns, rows = tables.eval_table(metrics(LONG))
    listing = tables.layout(title, columns, rows, 80)
    assert all(isinstance(p, str) for p in listing)
    assert listing[:3] == ["evaluation: /tmp/w/eval", "test set / system:", "primock57  llmasr-stage3"]
    assert "primock57  transformers:openai/whisper-large-v2" in listing
    # a name wider than the terminal: on a line of its own, whole (the terminal soft-wraps it)
    narrow = tables.layout(title, columns, rows, 30)
    assert "transformers:openai/whisper-large-v2" in narrow and "kincaid46" in narrow


def test_the_training_table_keeps_checkpoint_paths_whole():
    root = "/home/someone/projects/asr/runs/a-long-work-dir-name/checkpoints"
    row = ["1", "2", "8", "2.3456", "-", "12.3", "456", "0.0123", "-"]
    paths = [f"{root}/stage{s}" for s in (1, 2, 3)]
    names = ("stage", "steps", "samples", "loss", "val loss", "samples/s", "tokens/s", "model TFLOP/s", "MFU")
    cols = [*map(tables.Col, names), tables.Col("checkpoint", "left", keep=True)]
    lines = render(lambda c: tables.show(c, f"training: {root}", cols, [[*row, p] for p in paths]))
    assert max(cell_len(line) for line in lines) <= 80 and all(
        any(p in line for line in lines) for p in paths
    ), "\n".join(lines)


def test_error_lines_are_never_wrapped(monkeypatch):
    buf = StringIO()
    monkeypatch.setattr(common, "console", Console(width=80, file=buf, color_system=None))
    assert cli.main(["config", "--profile", "demo", "--set", "label.beam_size=abc"]) == 2
    lines = buf.getvalue().splitlines()
    assert lines[0] == "error: invalid configuration:"
    fix = next(line for line in lines if "label.beam_size:" in line)
    assert (
        fix.endswith("fix it in pipeline_config.yaml or with --set label.beam_size=...")
        and cell_len(fix) > 80
    )
