"""Summaries of a data run for people: counts per stage, the filter funnel, sample rows, a plot.

Plain functions over records; flows/artifacts.py publishes them as Prefect artifacts and the CLI
prints them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from llmasr.records import STATUS_OK, Decision, Item, Label, Segment
from llmasr.report import figure_png, pyplot


def counts(
    items: Sequence[Item],
    segments: Sequence[Segment],
    labels: Sequence[Label],
    decisions: Sequence[Decision],
    index: dict,
) -> list[dict]:
    ok = [i for i in items if i.status == STATUS_OK]
    kept = [d for d in decisions if d.kept]
    seg_s = sum(s.duration_s for s in segments)
    kept_s = sum(d.duration_s for d in kept)
    shards = index.get("shards", [])
    return [
        {
            "stage": "ingest",
            "count": len(items),
            "detail": (
                f"{len(ok)} ok, {len(items) - len(ok)} failed; "
                f"{sum(i.duration_s or 0 for i in ok) / 3600:.2f} h of audio"
            ),
        },
        {
            "stage": "segment",
            "count": len(segments),
            "detail": f"{seg_s / 3600:.2f} h; {sum(s.cut_by == 'vad' for s in segments)} cut by VAD",
        },
        {
            "stage": "label",
            "count": len(labels),
            "detail": f"{len(segments) - len(labels)} not labelled (duration rule)",
        },
        {
            "stage": "filter",
            "count": len(kept),
            "detail": f"kept {len(kept)}/{len(decisions)} segments, {kept_s / 3600:.2f} h",
        },
        {
            "stage": "shard",
            "count": len(shards),
            "detail": (
                f"{sum(e['samples'] for e in shards)} samples, {sum(e['bytes'] for e in shards) / 1e6:.1f} MB"
            ),
        },
    ]


def funnel(decisions: Sequence[Decision]) -> list[dict]:
    """Segments dropped per reason (a segment can have several), and how many were dropped for
    that reason alone."""
    any_reason = Counter(r for d in decisions for r in d.reasons)
    only = Counter(d.reasons[0] for d in decisions if len(d.reasons) == 1)
    rows = [{"reason": "total segments", "segments": len(decisions), "only_reason": ""}]
    rows += [{"reason": r, "segments": n, "only_reason": only.get(r, 0)} for r, n in any_reason.most_common()]
    rows.append({"reason": "kept", "segments": sum(d.kept for d in decisions), "only_reason": ""})
    return rows


def sample_rows(
    segments: Sequence[Segment], labels: Sequence[Label], decisions: Sequence[Decision], n: int = 12
) -> list[dict]:
    """A few kept and a few dropped segments side by side: label, caption, WER, scores."""
    seg = {s.segment_id: s for s in segments}
    lab = {x.segment_id: x for x in labels}
    kept = [d for d in decisions if d.kept][: n // 2]
    dropped = [d for d in decisions if not d.kept and d.segment_id in lab][: n - len(kept)]
    rows = []
    for d in kept + dropped:
        s, x = seg[d.segment_id], lab.get(d.segment_id)
        rows.append(
            {
                "segment_id": d.segment_id,
                "kept": d.kept,
                "reasons": ", ".join(d.reasons),
                "label": x.text if x else "",
                "caption": s.caption_text or "",
                "caption_wer": None if d.caption_wer is None else round(d.caption_wer, 3),
                "avg_logprob": round(x.avg_logprob, 3) if x else None,
                "no_speech_prob": round(x.no_speech_prob, 3) if x else None,
                "compression_ratio": round(x.compression_ratio, 2) if x else None,
            }
        )
    return rows


def funnel_plot_png(decisions: Sequence[Decision]) -> bytes:
    """A PNG: segment durations kept vs dropped, and drops per reason."""
    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    kept = [d.duration_s for d in decisions if d.kept]
    dropped = [d.duration_s for d in decisions if not d.kept]
    ax1.hist([kept, dropped], bins=20, stacked=True, label=["kept", "dropped"], color=["#2a9d8f", "#e76f51"])
    ax1.set_xlabel("segment duration (s)")
    ax1.set_ylabel("segments")
    ax1.legend()
    reasons = Counter(r for d in decisions for r in d.reasons).most_common()
    if reasons:
        ax2.barh([r for r, _ in reasons][::-1], [n for _, n in reasons][::-1], color="#e76f51")
    ax2.set_xlabel("segments dropped (a segment may have several reasons)")
    fig.tight_layout()
    return figure_png(fig)
