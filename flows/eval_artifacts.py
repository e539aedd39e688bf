"""Prefect artifacts of an evaluation run, under stable keys so their history is browsable in the UI.

Keys: ``eval-metrics`` (table: test set x system, every rate with its counts, RTF) and
``eval-report`` (markdown: report.md with the WER plot inlined).  The same table, report and plot
are written under ``<work_dir>/eval/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from llmasr.report import inline_image

METRICS_KEY = "eval-metrics"
REPORT_KEY = "eval-report"


def publish(out_dir: str, rows: Sequence[dict[str, Any]], report_md: str, png: bytes | None) -> None:
    """``png`` None: the report has no chart (nothing to plot) and says so."""
    create_table_artifact(
        list(rows),
        key=METRICS_KEY,
        description=f"O/N/R/U-WER (errors/words) and RTF per test set and system; files in {out_dir}",
    )
    md = inline_image(report_md, "wer.png", png)
    create_markdown_artifact(md, key=REPORT_KEY, description=f"Evaluation report ({out_dir}/report.md)")
