"""What every report shares: Markdown tables, matplotlib figures as PNG bytes, and a PNG inlined
into Markdown (a Prefect markdown artifact cannot link to a file beside it).

    plt = pyplot()
    fig, ax = plt.subplots()
    png = figure_png(fig)                                  # closes the figure
    md = inline_image("![loss](loss.png)", "loss.png", png)
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any


def markdown_table(rows: Sequence[dict[str, Any]], empty: str = "(none)") -> str:
    """A Markdown table of ``rows`` (the first row's keys are the columns; ``|`` and newlines in a
    cell escaped), or ``empty`` when there are none."""
    if not rows:
        return f"{empty}\n"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        out.append("| " + " | ".join(str(row[c]).replace("|", "\\|").replace("\n", " ") for c in cols) + " |")
    return "\n".join(out) + "\n"


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display: flows run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> bytes:
    """The figure as PNG bytes (90 dpi: an artifact-sized image); the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def png_data_uri(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def inline_image(markdown: str, name: str, png: bytes | None) -> str:
    """``markdown`` with its links to the image file ``name`` replaced by the image itself;
    unchanged when ``png`` is None (nothing was plotted)."""
    return markdown if png is None else markdown.replace(f"]({name})", f"]({png_data_uri(png)})")
