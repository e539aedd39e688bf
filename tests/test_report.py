"""llmasr.report: the Markdown tables and inlined PNGs every report and artifact uses."""

from __future__ import annotations

import base64

from llmasr.report import figure_png, inline_image, markdown_table, pyplot


def test_markdown_table_escapes_cells_and_says_when_empty():
    table = markdown_table([{"system": "a|b", "N-WER": 1.5}, {"system": "two\nlines", "N-WER": 2}])
    assert table.splitlines() == ["| system | N-WER |", "|---|---|", "| a\\|b | 1.5 |", "| two lines | 2 |"]
    assert markdown_table([]) == "(none)\n" and markdown_table([], empty="(no results)") == "(no results)\n"


def test_a_figure_inlines_as_a_png_where_the_report_links_its_file():
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = figure_png(fig)
    assert png.startswith(b"\x89PNG") and not plt.get_fignums()  # closed
    md = "# r\n\n![plot](wer.png)\n\nsee wer.png\n"
    inlined = inline_image(md, "wer.png", png)
    uri = inlined.split("](", 1)[1].split(")", 1)[0]
    assert base64.b64decode(uri.removeprefix("data:image/png;base64,")) == png
    assert inlined.endswith("see wer.png\n")  # only the link is replaced
    assert inline_image(md, "wer.png", None) == md
