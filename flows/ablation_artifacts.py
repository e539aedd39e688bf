"""Prefect artifacts of an ablation run, under stable keys so their history is browsable in the UI.

Keys: ``ablation-comparison`` (table: variant x test set x system, every rate with its counts) and
``ablation-report`` (markdown: report.md with the R-WER against N-WER plot inlined).  The same
files are written under ``<work_dir>/ablations/<name>/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.ablate import inline_plot

COMPARISON_KEY = "ablation-comparison"
REPORT_KEY = "ablation-report"


def publish(out_dir: str, rows: Sequence[dict[str, Any]], report_md: str, png: bytes | None) -> None:
    create_table_artifact(
        list(rows),
        key=COMPARISON_KEY,
        description=f"O/N/R/U-WER (errors/words) per variant, test set and system; files in {out_dir}",
    )
    create_markdown_artifact(
        inline_plot(report_md, png), key=REPORT_KEY, description=f"Ablation report ({out_dir}/report.md)"
    )
