"""Prefect artifacts of a training run: ``train-summary`` (table) and ``train-loss`` (loss curves).

The plot is also written to ``<work_dir>/reports/loss.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from llmasr.atomic import atomic_path
from llmasr.layout import WorkLayout
from llmasr.report import figure_png, png_data_uri, pyplot


def read_metrics(layout: WorkLayout) -> list[dict]:
    path = layout.root / "logs" / "train.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def summary_rows(records: list[dict], results: dict[int, dict[str, Any]]) -> list[dict]:
    rows = []
    for stage, info in sorted(results.items()):
        recs = [r for r in records if r.get("stage") == stage]
        train = [r for r in recs if r.get("loss") is not None]
        val = [r for r in recs if r.get("val_loss") is not None]
        last = train[-1] if train else {}
        rows.append(
            {
                "stage": stage,
                "steps": info.get("steps"),
                "samples": info.get("samples"),
                "final_loss": round(last["loss"], 4) if train else None,
                "val_loss": round(val[-1]["val_loss"], 4) if val else None,
                "samples_per_s": round(last.get("samples_per_s", 0.0), 2) if train else None,
                "tokens_per_s": round(last.get("tokens_per_s", 0.0), 1) if train else None,
                # per process
                "model_tflops": round(last["model_tflops"], 4) if "model_tflops" in last else None,
                "mfu": round(last["mfu"], 4) if "mfu" in last else None,  # GPU only (tasks/flops.py)
            }
        )
    return rows


def loss_plot_png(records: list[dict]) -> bytes:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for stage in sorted({r["stage"] for r in records if "stage" in r}):
        train = [
            (r["step"], r["loss"]) for r in records if r.get("stage") == stage and r.get("loss") is not None
        ]
        val = [
            (r["step"], r["val_loss"])
            for r in records
            if r.get("stage") == stage and r.get("val_loss") is not None
        ]
        if train:
            ax.plot(*zip(*train), label=f"stage {stage} train")
        if val:
            ax.plot(*zip(*val), "o--", label=f"stage {stage} val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    return figure_png(fig)


def publish(layout: WorkLayout, results: dict[int, dict[str, Any]]) -> None:
    records = read_metrics(layout)
    rows = summary_rows(records, results)
    create_table_artifact(rows, key="train-summary", description=f"Training stages in {layout.root}")
    png = loss_plot_png(records)
    out = layout.root / "reports" / "loss.png"
    with atomic_path(out) as tmp:
        tmp.write_bytes(png)
    ckpts = "\n".join(
        f"- stage {s}: `{Path(layout.root) / 'checkpoints' / f'stage{s}'}`" for s in sorted(results)
    )
    create_markdown_artifact(
        f"# Training: `{layout.root}`\n"
        "\n"
        f"![loss]({png_data_uri(png)})\n"
        "\n"
        "## Checkpoints\n"
        f"{ckpts}\n"
        "\n"
        f"Metrics log: `{layout.root / 'logs' / 'train.jsonl'}`\n",
        key="train-loss",
        description="Loss curves and checkpoints",
    )
