"""The CLI's tables at any terminal width, names and paths never cut.

``show(console, title, columns, rows)`` prints a table laid out for the console's width
(``layout``), the first form that fits:

* boxed: a rich table with borders, every cell on one line;
* compact: no borders, columns two spaces apart, a rule under the headers; the ``keep`` columns
  (system names, test sets, paths) at their full width, never wrapped, the others wrapped at
  spaces down to their longest word, the widest first;
* a plain listing, when a name does not fit beside the other columns: per row a line of its
  ``keep`` values, then its other cells as ``header value`` pairs, indented, as many to a line as
  fit.

The title is a line of its own above any form, never wrapped, so a path in it stays whole for
copy-paste (a terminal soft-wraps a line wider than it); so are the listing's lines.  Column widths
are computed here, not left to rich, whose last resort for a table wider than the terminal cuts
every column alike ("faster-whispe…").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from io import StringIO
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

INDENT = "    "  # the listing's cells, under their row's names
SEP = "  "
BOXED = dict(box=box.HEAVY_HEAD, padding=(0, 1))
COMPACT = dict(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))


@dataclass(frozen=True)
class Col:
    header: str
    justify: str = "right"
    keep: bool = False  # a name or path: shown whole on one line, never wrapped or cut


def _longest_word(text: str) -> int:
    return max((cell_len(w) for w in text.split()), default=0)


def _overhead(style: dict[str, Any], ncols: int) -> int:
    """The columns a table of ``style`` spends on borders and padding (rendered, not assumed)."""
    t = Table(**style)
    for _ in range(ncols):
        t.add_column("x", width=1)
    buf = StringIO()
    Console(file=buf, width=1000, color_system=None).print(t)
    return max(cell_len(line) for line in buf.getvalue().splitlines()) - ncols


def _widths(
    columns: Sequence[Col], rows: Sequence[Sequence[str]], avail: int, wrap: bool
) -> list[int] | None:
    """Content widths within ``avail`` cells (``wrap``: the columns not kept may wrap), or None."""
    cells = [[c.header, *(r[i] for r in rows)] for i, c in enumerate(columns)]
    full = [max(cell_len(v) for v in col) for col in cells]
    least = [
        f if c.keep or not wrap else max(_longest_word(v) for v in col)
        for c, f, col in zip(columns, full, cells)
    ]
    if sum(least) > avail:
        return None
    widths = list(full)
    excess = sum(widths) - avail
    while excess > 0:  # narrow the widest column that may still wrap, one cell at a time
        i = max((j for j in range(len(widths)) if widths[j] > least[j]), key=lambda j: widths[j])
        widths[i] -= 1
        excess -= 1
    return widths


def _listing(columns: Sequence[Col], rows: Sequence[Sequence[str]], width: int) -> list[str]:
    kept = [i for i, c in enumerate(columns) if c.keep]
    rest = [i for i, c in enumerate(columns) if not c.keep]
    lines = []
    if kept:
        lines.append(" / ".join(columns[i].header for i in kept) + ":")
    for row in rows:
        names = SEP.join(row[i] for i in kept)
        lines += [names] if cell_len(names) <= width else [row[i] for i in kept]
        line = ""
        for i in rest:
            pair = f"{columns[i].header} {row[i]}"
            if line and cell_len(INDENT + line + SEP + pair) > width:
                lines.append(INDENT + line)
                line = pair
            else:
                line = f"{line}{SEP}{pair}" if line else pair
        if line:
            lines.append(INDENT + line)
    return lines


def layout(
    title: str | None, columns: Sequence[Col], rows: Sequence[Sequence[Any]], width: int
) -> list[str | Table]:
    """What ``show`` prints: plain lines (str, printed unwrapped) and at most one rich Table."""
    rows = [[str(v) for v in r] for r in rows]
    head = [title] if title else []
    for style, wrap in ((BOXED, False), (COMPACT, True)):
        widths = _widths(columns, rows, width - _overhead(style, len(columns)), wrap)
        if widths is not None:
            t = Table(**style)
            for c, w in zip(columns, widths):
                t.add_column(c.header, justify=c.justify, width=w, no_wrap=c.keep, overflow=("fold"))  # type: ignore[arg-type]
            for r in rows:
                t.add_row(*r)
            return [*head, t]
    return [*head, *_listing(columns, rows, width)]


def show(console: Console, title: str | None, columns: Sequence[Col], rows: Sequence[Sequence[Any]]) -> None:
    """Print the table of ``rows`` (a value per column) laid out for ``console``'s width."""
    for part in layout(title, columns, rows, console.width):
        if isinstance(part, str):
            console.print(Text(part), soft_wrap=True)
        else:
            console.print(part)


def eval_table(metrics: dict[str, Any]) -> tuple[str, list[Col], list[list[str]]]:
    """The WER table of an evaluation's metrics (``evaluate_flow``'s result): title, columns, rows."""
    from pathlib import Path

    from tasks.eval_report import rtf_label

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    kinds = {s["name"]: s["kind"] for s in metrics["systems"]}
    columns = [
        Col("test set", "left", keep=True),
        Col("system", "left", keep=True),
        *map(Col, ("utts", "N-WER", "R-WER", "U-WER", "O-WER", "RTF")),
    ]
    rows = [
        [
            set_name,
            system,
            str(m["utterances"]),
            pct(m["n_wer"]),
            pct(m["r_wer"]),
            pct(m["u_wer"]),
            pct(m["o_wer"]),
            rtf_label(m, kinds.get(system)),
        ]
        for set_name, per_system in metrics["results"].items()
        for system, m in per_system.items()
    ]
    return f"evaluation: {Path(metrics['work_dir']) / 'eval'}", columns, rows
