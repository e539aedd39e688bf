"""A stage run's DeepSpeed checkpoints (``out_dir/deepspeed``): whose they are, whether this run
can resume them, the position it resumes at, and which tags are kept.

``engine.save_checkpoint(out_dir/deepspeed, tag=f"step{step}")`` every ``train.ckpt_every`` steps
and at the end (frozen parameters excluded; the last ``KEEP_CHECKPOINTS`` tags kept).  A rerun with
the same key loads the latest one, continues the step count and skips the batches already trained
on (each loader worker's position is in the checkpoint; the batch order is a function of the seed,
epoch, rank and worker).  It needs the same number of processes and loader workers.  Each tag has a
``trainer_state.json`` beside DeepSpeed's files: the resume position, readable without torch.load.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from tasks.run_file import read_json

log = logging.getLogger("llmasr.train")

KEEP_CHECKPOINTS = 2
CKPT_DIR = "deepspeed"
CKPT_META = "run.json"
TRAINER_STATE = "trainer_state.json"


def claim_checkpoints(ckpt_dir: Path, key: str, stage: int, world: int, num_workers: int) -> None:
    """Checkpoints of another run (key or stage) are dropped; while there is none to resume (no
    ``latest``) run.json is (re)written with this run's key and shape -- also over the run.json of a
    run that died before its first checkpoint, whose shape must not bind the next one."""
    from llmasr.atomic import write_json

    meta = ckpt_dir / CKPT_META
    if ckpt_dir.exists():
        old = read_json(meta) if meta.is_file() else {}
        if old.get("key") != key or old.get("stage") != stage:
            log.info("removing %s: its checkpoints are of another run (key %s)", ckpt_dir, old.get("key"))
            shutil.rmtree(ckpt_dir)
    if not (ckpt_dir / "latest").is_file():
        write_json(meta, {"key": key, "stage": stage, "world_size": world, "num_workers": num_workers})


def resume_problem(ckpt_dir: Path, world: int, num_workers: int) -> str | None:
    """Why the checkpoint in ``ckpt_dir`` cannot be resumed by ``world`` processes with
    ``num_workers`` loader workers each (the batch order is per rank and worker), naming the key;
    None when it can, or when there is none."""
    if not (ckpt_dir / "latest").is_file():
        return None
    meta = read_json(ckpt_dir / CKPT_META)
    if (meta.get("world_size"), meta.get("num_workers")) == (world, num_workers):
        return None
    return (
        f"train.nproc_per_node / train.num_workers: {ckpt_dir} was written by "
        f"{meta.get('world_size')} processes with {meta.get('num_workers')} loader workers each; "
        "resume with the same, or delete that folder to start the stage over"
    )


def resume_state(ckpt_dir: Path, rank: int) -> dict[str, Any]:
    """The trainer's state to start from: the latest checkpoint's client state (read before the
    data loaders exist, so they start at the right place; the engine loads the weights later), or a
    fresh start.  ``skip``: this rank's batches already trained on, per loader worker."""
    state = {
        "step": 0,
        "epoch": 0,
        "samples": 0,
        "audio_s": 0.0,
        "tokens": 0,
        "skip": {},
        "resumed_from": None,
    }
    latest = ckpt_dir / "latest"
    if not latest.is_file():
        return state
    import torch

    tag = latest.read_text().strip()
    sidecar = ckpt_dir / tag / TRAINER_STATE
    states = ckpt_dir / tag / "mp_rank_00_model_states.pt"
    if sidecar.is_file():
        client = read_json(sidecar)
    elif states.is_file():  # killed between DeepSpeed's save and the sidecar
        client = torch.load(str(states), map_location="cpu", weights_only=False)
    else:
        return state
    consumed = client.get("consumed") or []
    main = rank == 0  # the counters in a checkpoint are global: rank 0 carries them on
    state.update(
        step=int(client.get("step", 0)),
        epoch=int(client.get("epoch", 0)),
        samples=int(client.get("samples", 0)) if main else 0,
        audio_s=float(client.get("audio_s", 0.0)) if main else 0.0,
        tokens=int(client.get("tokens", 0)) if main else 0,
        skip={int(k): int(v) for k, v in (consumed[rank] if rank < len(consumed) else {}).items()},
        resumed_from=tag,
    )
    return state


def saved(ckpt_dir: Path, tag: str, client: dict[str, Any]) -> None:
    """Rank 0, after DeepSpeed saved ``tag``: its trainer_state.json, and only the last
    ``KEEP_CHECKPOINTS`` tags kept."""
    from llmasr.atomic import write_json

    write_json(ckpt_dir / tag / TRAINER_STATE, client)
    tags = sorted(
        (p for p in ckpt_dir.glob("step*") if p.is_dir() and p.name[4:].isdigit()),
        key=lambda p: int(p.name[4:]),
    )
    for old in tags[:-KEEP_CHECKPOINTS]:
        if old.name != tag:
            shutil.rmtree(old, ignore_errors=True)
