"""Prefect artifacts of a data run, under stable keys so their history is browsable in the UI.

Keys: ``data-counts`` (table), ``data-filter-funnel`` (table), ``data-samples`` (table),
``data-report`` (markdown with the plot and links), ``label-progress`` (progress while labelling).
The plot is also written to ``<work_dir>/reports/filter.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from llmasr.atomic import atomic_path, write_text
from llmasr.layout import WorkLayout
from llmasr.records import Decision, Item, Label, Segment, read_records
from llmasr.report import markdown_table, png_data_uri
from tasks import summary
from tasks.parts import fingerprint


def label_progress_start(total_tasks: int) -> UUID | None:
    return create_progress_artifact(
        progress=0.0 if total_tasks else 100.0,
        key="label-progress",
        description="labelling: share of label tasks finished",
    )


def label_progress_update(artifact_id: UUID | None, done: int, total: int) -> None:
    if artifact_id is not None and total:
        update_progress_artifact(artifact_id=artifact_id, progress=100.0 * done / total)


def _filter_plot(layout: WorkLayout, decisions: Sequence[Decision]) -> tuple[bytes, Path]:
    """reports/filter.png, redrawn only when the decisions changed (matplotlib costs ~2 s)."""
    plot_path = layout.root / "reports" / "filter.png"
    key_path = plot_path.with_suffix(".key")
    key = fingerprint([(d.segment_id, d.kept, d.reasons, d.duration_s) for d in decisions])
    if plot_path.is_file() and key_path.is_file() and key_path.read_text() == key:
        return plot_path.read_bytes(), plot_path
    png = summary.funnel_plot_png(decisions)
    with atomic_path(plot_path) as tmp:
        tmp.write_bytes(png)
    write_text(key_path, key)
    return png, plot_path


def publish_data_run(
    layout: WorkLayout,
    items: Sequence[Item],
    decisions: Sequence[Decision],
    index: dict,
    labelled_now: int,
    rtfx: float,
) -> None:
    segments = read_records(layout.segments, Segment)
    labels = read_records(layout.labels, Label)
    counts = summary.counts(items, segments, labels, decisions, index)
    create_table_artifact(counts, key="data-counts", description=f"Counts per stage in {layout.root}")
    create_table_artifact(
        summary.funnel(decisions),
        key="data-filter-funnel",
        description="Segments dropped per filter reason (only_reason: dropped for that reason alone)",
    )
    create_table_artifact(
        summary.sample_rows(segments, labels, decisions),
        key="data-samples",
        description="Sample kept and dropped segments: label vs caption",
    )
    png, plot_path = _filter_plot(layout, decisions)
    failed = [i for i in items if i.status != "ok"]
    md = [
        f"# Data run: `{layout.root}`\n",
        f"Labelled {labelled_now} new items this run"
        + (f" at RTFx {rtfx:.1f}" if labelled_now else " (nothing new)")
        + ".\n",
        markdown_table(counts),
        f"\n![filter plot]({png_data_uri(png)})\n",
        "\n## Files\n",
        f"- items: `{layout.items}`\n"
        f"- segments: `{layout.segments}`\n"
        f"- labels: `{layout.labels}`\n"
        f"- decisions: `{layout.decisions}`\n"
        f"- shard index: `{layout.shard_index}`\n"
        f"- plot: `{plot_path}`\n",
    ]
    if failed:
        md += [
            "\n## Failed items\n",
            markdown_table([{"item_id": i.item_id, "error": i.error} for i in failed]),
        ]
    create_markdown_artifact("".join(md), key="data-report", description="Data run summary")
