"""The training flow under a real Prefect server, on the shards of the reference data run.

Stages 1 -> 2 -> 3 launched as subprocesses (torchrun, 1 CPU process, tiny models), then: a rerun
shows Cached stage tasks; a stage asked for without its predecessor fails before any compute; a
stage that runs past train.timeout_s is killed with its process group and fails with the log's tail.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import N_ITEMS
from llmasr.config import ConfigError
from llmasr.tiny_models import build_demo_models
from prefect_states import settled_task_states
from tasks import checkpoints
from tasks.launch import TrainingProcessError
from tasks.train_data import ShardSpeechDataset


@pytest.fixture(scope="module")
def models(session_tmp: Path) -> dict:
    return build_demo_models(session_tmp / "demo-models")


def train_args(work: Path, corpus: Path, models: dict, *extra: str) -> dict:
    return dict(
        profile="demo",
        work_dir=str(work),
        overrides=[
            f"demo.corpus_dir={corpus}",
            f"demo.n_items={N_ITEMS}",
            f"train.encoder={models['whisper']}",
            f"train.llm={models['llm']}",
            f"train.tokenizer={models['tokenizer']}",
            "train.stage1.max_steps=2",
            "train.stage2.max_steps=3",
            "train.stage3.max_steps=3",
            *extra,
        ],
    )


def _task_states(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def read_runs():
        with get_client(sync_client=True) as client:
            return client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )

    return sorted(settled_task_states(read_runs, ["train-stage"]).get("train-stage", []))


def test_three_stages_then_a_cached_rerun(
    reference_run, corpus: Path, models: dict, session_tmp: Path, capsys, monkeypatch
):
    from flows.train import train_flow

    ref, _ = reference_run
    work = session_tmp / "train-flow"
    shutil.copytree(ref, work)
    state = train_flow(**train_args(work, corpus, models), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert sorted(result) == ["stage1", "stage2", "stage3"]
    for stage, max_steps in ((1, 2), (2, 3), (3, 3)):  # train_args's train.stage<N>.max_steps
        info = checkpoints.read_stage(checkpoints.stage_dir(work, stage))
        assert info is not None and info["steps"] == max_steps, (stage, info)
    assert (work / "checkpoints" / "stage1" / "encoder" / "config.json").is_file()
    assert (work / "checkpoints" / "stage3" / "lora" / "adapter_config.json").is_file()
    records = [json.loads(line) for line in (work / "logs" / "train.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records if "loss" in r} == {1, 2, 3}
    assert (work / "reports" / "loss.png").is_file()
    # the summary artifact: a row per stage with its throughput and model FLOP/s (no MFU on a CPU)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["train-summary"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    assert len(arts) == 1
    rows = json.loads(arts[0].data) if isinstance(arts[0].data, str) else arts[0].data
    assert [r["stage"] for r in rows] == [1, 2, 3]
    assert all(r["samples_per_s"] > 0 and r["model_tflops"] > 0 and r["mfu"] is None for r in rows), rows
    # the stage-3 model loads and transcribes a batch of the shards
    model = checkpoints.load_llmasr(checkpoints.stage_dir(work, 3))
    enc = model.encoder.config
    ds = ShardSpeechDataset(
        work / "shards" / "index.json",
        "train",
        n_mels=enc.num_mel_bins,
        max_frames=2 * enc.max_source_positions,
        max_batch_size=2,
        shuffle=False,
    )
    batch = next(iter(ds))
    texts = model.generate(batch["input_features"], batch["feature_lengths"], max_new_tokens=4)
    assert len(texts) == len(batch["keys"]) >= 1 and all(isinstance(t, str) for t in texts)
    index = json.loads((work / "shards" / "index.json").read_text())
    assert checkpoints.new_train_hours(work, index) == 0.0  # a full training records what it saw

    again = train_flow(**train_args(work, corpus, models), return_state=True)
    assert again.is_completed()
    assert _task_states(again.state_details.flow_run_id) == ["Cached", "Cached", "Cached"]

    # a caller's config (the CLI's, a parent flow's) is the run's: the flow loads nothing (here and
    # in `llmasr train` below), its stages keep their keys, and its flow run records the config whole
    import flows.config
    from llmasr.config import ConfigError, load_config

    cfg = load_config(**train_args(work, corpus, models))

    def loads_again(*args, **kwargs):
        raise AssertionError(f"the flow loaded the config again: {args} {kwargs}")

    monkeypatch.setattr(flows.config, "load_config", loads_again)
    given = train_flow(config=cfg, return_state=True)
    assert given.is_completed(), given.message
    assert _task_states(given.state_details.flow_run_id) == ["Cached", "Cached", "Cached"]
    with get_client(sync_client=True) as client:
        recorded = client.read_flow_run(given.state_details.flow_run_id).parameters["config"]
    assert recorded["work_dir"] == cfg.work_dir and recorded["train"]["stage3"]["max_steps"] == 3
    with pytest.raises(ConfigError, match="profile, work_dir: not read when config is given"):
        train_flow(config=cfg, profile="demo", work_dir=str(work))

    # `llmasr train` (cached here too) prints each stage's numbers from the metrics log
    from rich.console import Console

    import cli
    from cli import common

    monkeypatch.setattr(common, "console", Console(width=400))  # no column folded
    args = train_args(work, corpus, models)
    assert (
        cli.main(
            [
                "train",
                "--profile",
                "demo",
                "--work-dir",
                str(work),
                *[a for o in args["overrides"] for a in ("--set", o)],
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "model TFLOP/s" in line)
    assert [c.strip() for c in header.strip("┃│ ").split("┃")][:9] == [
        "stage",
        "steps",
        "samples",
        "loss",
        "val loss",
        "samples/s",
        "tokens/s",
        "model TFLOP/s",
        "MFU",
    ]
    for stage in (1, 2, 3):
        row = next(
            line
            for line in lines
            if line.rstrip(" │").endswith(str(checkpoints.stage_dir(work.resolve(), stage)))
        )
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        # no MFU on a CPU
        assert cells[0] == str(stage) and float(cells[5]) > 0 and float(cells[7]) > 0 and cells[8] == "-", (
            cells
        )


def test_a_stage_without_its_predecessor_fails_before_compute(
    prefect_harness, corpus: Path, models: dict, reference_run, session_tmp: Path
):
    from flows.train import train_flow

    ref, _ = reference_run
    work = session_tmp / "train-no-stage2"
    shutil.copytree(ref, work, ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(ConfigError, match="stage 3 needs the checkpoint of stage 2"):
        train_flow(**train_args(work, corpus, models), stages=[3])
    assert not (work / "checkpoints").exists()
    # a hostfile under torchrun: refused before stage 1, naming the key
    with pytest.raises(ConfigError, match=r"^train.hostfile: set, but train.launcher is 'torchrun'"):
        train_flow(**train_args(work, corpus, models, "train.hostfile=infra/hostfile.example"))
    assert not (work / "checkpoints").exists()


def test_a_hung_stage_is_killed_with_its_process_group(
    prefect_harness, corpus: Path, models: dict, reference_run, session_tmp: Path
):
    from flows.train import train_flow

    ref, _ = reference_run
    work = session_tmp / "train-timeout"
    shutil.copytree(ref, work, ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(TrainingProcessError, match="train.timeout_s=2") as err:
        train_flow(**train_args(work, corpus, models, "train.timeout_s=2"), stages=[1])
    assert "last lines" in str(err.value)
    run_json = work / "logs" / "stage1.run.json"
    leftovers = subprocess.run(["pgrep", "-f", str(run_json)], capture_output=True, text=True).stdout.split()
    assert leftovers == []
    assert checkpoints.read_stage(checkpoints.stage_dir(work, 1)) is None


def test_shards_without_validation_warn_once_in_the_flow_log_and_the_trainers(
    prefect_harness, models: dict, tmp_path: Path
):
    """Items that all hashed to train: the flow's log warns once naming shard.validation_fraction and
    its value, and the stage's trainer log once."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from flows.train import train_flow
    from test_train_data import SENTENCES, make_shards

    work = tmp_path / "work"
    make_shards(work, {"train": SENTENCES[:2]}, per_shard=2)
    overrides = [
        f"train.encoder={models['whisper']}",
        f"train.llm={models['llm']}",
        f"train.tokenizer={models['tokenizer']}",
        "train.stage1.max_steps=1",
    ]
    state = train_flow(profile="demo", work_dir=str(work), overrides=overrides, stages=[1], return_state=True)
    assert state.is_completed(), state.message
    APILogHandler().flush()  # the run's last log batch, sent to the server
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    warnings = [r.message for r in logs if r.level >= 30 and "has no validation split" in r.message]
    assert len(warnings) == 1 and "raise shard.validation_fraction (now 0.15)" in warnings[0], warnings
    trainer = [
        line
        for line in (work / "logs" / "stage1.log").read_text().splitlines()
        if "has no validation split" in line
    ]
    assert len(trainer) == 1 and "WARNING" in trainer[0] and "shard.validation_fraction" in trainer[0]


def test_stage_keys_follow_what_each_stage_learns_and_exports(tmp_path: Path):
    """Launch settings never retrain; merge_lora reruns stage 3 only (its merged_llm/ export)."""
    from flows.train import stage_key
    from llmasr.config import load_config
    from llmasr.layout import WorkLayout

    layout = WorkLayout(tmp_path)
    layout.shard_index.parent.mkdir(parents=True)
    layout.shard_index.write_text('{"shards": []}')

    def keys(*overrides: str) -> list[str]:
        cfg = load_config("demo", list(overrides), work_dir=str(tmp_path))
        return [stage_key(cfg, layout, s) for s in (1, 2, 3)]

    base = keys()
    assert keys("train.master_port=29611", "train.num_workers=3", "train.node_launcher=slurm") == base
    merged = keys("train.merge_lora=true")
    assert merged[:2] == base[:2] and merged[2] != base[2]
    lr2 = keys("train.stage2.lr=0.5")
    assert lr2[0] == base[0] and lr2[1] != base[1]


def test_stage_keys_follow_the_deepspeed_configs_content_not_its_path(tmp_path: Path):
    """A copy of the DeepSpeed config elsewhere (another checkout) or a new "_comment" keeps the
    stages cached; a changed setting reruns them."""
    from flows.train import stage_key
    from llmasr.config import load_config
    from llmasr.layout import WorkLayout
    from tasks.launch import resolve_repo_path

    layout = WorkLayout(tmp_path)
    layout.shard_index.parent.mkdir(parents=True)
    layout.shard_index.write_text('{"shards": []}')
    base_cfg = load_config("demo", work_dir=str(tmp_path))
    ds = json.loads(resolve_repo_path(base_cfg.train.deepspeed_config).read_text())

    def key(config: dict) -> str:
        path = tmp_path / f"ds-{len(list(tmp_path.glob('ds-*')))}.json"
        path.write_text(json.dumps(config))
        return stage_key(
            load_config("demo", [f"train.deepspeed_config={path}"], work_dir=str(tmp_path)), layout, 1
        )

    base = stage_key(base_cfg, layout, 1)
    assert key(ds) == base
    assert key({**ds, "_comment": "another note"}) == base
    assert key({**ds, "zero_optimization": {**ds["zero_optimization"], "stage": 1}}) != base


def test_a_bundled_models_package_or_converter_upgrade_retrains(tmp_path: Path, monkeypatch):
    """A bundled: name keys a stage by the cache folder it resolves to (package versions and
    CONVERTER_VERSION in the name), not by its text alone."""
    import llmasr.bundled
    from flows.train import stage_key
    from llmasr.config import load_config
    from llmasr.layout import WorkLayout

    layout = WorkLayout(tmp_path)
    layout.shard_index.parent.mkdir(parents=True)
    layout.shard_index.write_text('{"shards": []}')
    cfg = load_config("demo", ["train.encoder=bundled:tiny.en"], work_dir=str(tmp_path))
    before = stage_key(cfg, layout, 1)
    assert stage_key(cfg, layout, 1) == before
    monkeypatch.setattr(llmasr.bundled, "CONVERTER_VERSION", llmasr.bundled.CONVERTER_VERSION + 1)
    assert stage_key(cfg, layout, 1) != before
