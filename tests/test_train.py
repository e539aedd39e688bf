"""tasks.train: the three stages under real DeepSpeed engines (CPU accelerator, gloo, ZeRO-2),
launched as the flow launches them (torchrun, 1 and 2 processes), on real espeak-ng shards.

Checked: frozen parameters stay bit-identical and trained ones change (the trainer fingerprints
every parameter with ``verify_params``, and the exports are compared with their sources); the
exports load with ``from_pretrained``; the metrics log; a SIGKILLed stage resumes from its
DeepSpeed checkpoint; config errors fail fast naming the key; and stages 2 + 3 learn a small set
well enough that greedy decoding of ``load_llmasr(stage3)`` reproduces it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jiwer
import pytest
import torch
from safetensors.torch import load_file

from llmasr.config import LoraConfig, StageConfig, TrainConfig
from llmasr.text import normalize
from llmasr.tiny_models import tiny_setup
from tasks.checkpoints import load_llmasr, model_config, read_stage, stage_dir, write_stage
from tasks.launch import launch_command, launch_env
from tasks.run_file import write_run_config
from tasks.train_data import ShardSpeechDataset, make_loader
from test_train_data import SENTENCES, VALIDATION_SENTENCES, make_shards

REPO = Path(__file__).resolve().parents[1]
LORA = LoraConfig(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # a 512-token BPE for the LLM (its output layer is most of a tiny model's compute) and an
    # init scale that lets the tied output layer learn to pick tokens in tens of steps
    return tiny_setup(tmp_path_factory.mktemp("models"), vocab_size=512, llm_init_std=0.3)


@pytest.fixture(scope="module")
def shard_index(tmp_path_factory) -> Path:
    # 4 train shards (dealt out to 2 ranks), 1 validation shard (split by sample index)
    return make_shards(
        tmp_path_factory.mktemp("data") / "work",
        {"train": SENTENCES[:8], "validation": VALIDATION_SENTENCES[:2]},
        per_shard=2,
    )


def train_config(tiny, **kw) -> TrainConfig:
    base = dict(
        encoder=str(tiny.whisper),
        llm=str(tiny.llm),
        tokenizer=str(tiny.tokenizer),
        adapter_hidden=32,
        lora=LORA,
        launcher="torchrun",
        nproc_per_node=1,
        deepspeed_config="infra/deepspeed/zero2_cpu.json",
        precision="auto",
        batch_max_audio_s=8.0,
        max_batch_size=4,
        num_workers=1,
        cpu_threads=1,  # tiny models: one OpenMP thread per rank (as the demo)
        log_every=1,
        val_every=2,
        val_max_batches=2,
        ckpt_every=2,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def write_run(
    work: Path, stage: int, train: TrainConfig, shard_index: Path, key: str | None = None, **stage_kw
) -> Path:
    sc = StageConfig(**{"lr": 1e-3, "max_steps": 3, "warmup_steps": 1, **stage_kw})
    path = work / f"run{stage}.json"
    write_run_config(
        path,
        stage=stage,
        work_dir=str(work),
        shard_index=str(shard_index),
        out_dir=str(stage_dir(work, stage)),
        key=key or f"stage{stage}-key",
        model=model_config(train, work, stage),  # as the flow builds it
        train=train,
        stage_cfg=sc,
        deepspeed_config=train.deepspeed_config,
        precision=train.precision,
        verify_params=True,
    )
    return path


def env_for(train: TrainConfig) -> dict[str, str]:
    return {**os.environ, **launch_env(train, gpu=False)}


def launch(run_json: Path, train: TrainConfig, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        launch_command(run_json, train),
        cwd=REPO,
        env=env_for(train),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def records(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "logs" / "train.jsonl").read_text().splitlines()]


def tensors(folder: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(folder / name))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ three stages


@pytest.mark.parametrize("nproc", [1, 2])
def test_three_stages_in_sequence(tiny, shard_index, tmp_path, nproc):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, WhisperForConditionalGeneration, WhisperModel

    from llmasr.model import load_adapter

    work = tmp_path / "work"
    train = train_config(tiny, nproc_per_node=nproc, merge_lora=True, grad_accum=2 if nproc == 2 else 1)
    sources = {f: sha256(f) for f in (tiny.llm / "model.safetensors", tiny.whisper / "model.safetensors")}
    for stage in (1, 2, 3):
        launch(write_run(work, stage, train, shard_index), train)
        info = read_stage(stage_dir(work, stage))
        assert info and info["steps"] == 3 and info["world_size"] == nproc and info["zero_stage"] == 2
        assert info["precision"] == "fp32"
        assert info["verify"]["frozen_changed"] == [], stage  # frozen: bit-identical in the engine
        assert info["verify"]["trained_unchanged"] == [], stage  # every trained tensor moved
        assert info["key"] == f"stage{stage}-key" and info["samples"] > 0 and info["val_loss"] is not None
    starts = [r for r in records(work) if r.get("event") == "start"]
    # train.cudnn_attention default
    assert len(starts) == 3 and all(r["cudnn_attention"] is False for r in starts)
    logged = [r for r in records(work) if "loss" in r and "step" in r and "lr" in r]
    assert logged and all(r["model_tflops"] > 0 and "mfu" not in r for r in logged)  # no peak FLOP/s on a CPU

    s1, s2, s3 = (stage_dir(work, s) for s in (1, 2, 3))
    # stage 1: encoder trained, Whisper's decoder (the head) and the position table untouched
    src = tensors(tiny.whisper)
    exported = tensors(s1 / "whisper")
    dec = [k for k in src if k.startswith("model.decoder.")]
    assert dec and all(torch.equal(exported[k], src[k]) for k in dec)
    assert torch.equal(
        exported["model.encoder.embed_positions.weight"], src["model.encoder.embed_positions.weight"]
    )
    assert not torch.equal(
        exported["model.encoder.layers.0.fc1.weight"], src["model.encoder.layers.0.fc1.weight"]
    )
    enc = WhisperModel.from_pretrained(str(s1 / "encoder")).get_encoder().state_dict()
    for k, v in (
        WhisperForConditionalGeneration.from_pretrained(str(s1 / "whisper"))
        .get_encoder()
        .state_dict()
        .items()
    ):
        assert torch.equal(enc[k], v), k

    # stage 2: starts from the stage-1 encoder; only the adapter is exported
    m2 = json.loads((s2 / "model.json").read_text())
    assert (
        Path(m2["encoder"]) == (s1 / "encoder").resolve()
        and Path(m2["adapter_path"]) == (s2 / "adapter").resolve()
    )
    p2 = load_adapter(s2 / "adapter")

    # stage 3: LoRA + adapter trained further; the base LLM file untouched
    p3 = load_adapter(s3 / "adapter")
    assert not torch.equal(p2.linear1.weight, p3.linear1.weight)
    base = AutoModelForCausalLM.from_pretrained(str(tiny.llm))
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    peft = PeftModel.from_pretrained(base, str(s3 / "lora"))
    lora_b = [p for n, p in peft.named_parameters() if "lora_B" in n]
    assert lora_b and any(bool(p.abs().sum() > 0) for p in lora_b)  # B starts at zero: it trained
    assert {f: sha256(f) for f in sources} == sources  # the source checkpoints' files: not written to
    merged = AutoModelForCausalLM.from_pretrained(str(s3 / "merged_llm"))
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q], base_sd[q])
    assert torch.equal(
        merged.state_dict()["model.layers.0.mlp.up_proj.weight"], base_sd["model.layers.0.mlp.up_proj.weight"]
    )

    model = load_llmasr(s3)
    x, lengths = torch.randn(2, 80, 160), torch.tensor([160, 120])
    texts = model.generate(x, lengths, max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    ids = model.generate_ids(x, lengths, max_new_tokens=4)
    merged_ids = load_llmasr(s3, merged=True).generate_ids(x, lengths, max_new_tokens=4)
    assert ids.tolist() == merged_ids.tolist()

    # metrics: every stage logged steps 1..3 with the fields the flow and dashboards read
    recs = records(work)
    for stage in (1, 2, 3):
        steps = [r for r in recs if r["stage"] == stage and "loss" in r]
        assert [r["step"] for r in steps] == [1, 2, 3]
        for r in steps:
            assert {
                "stage",
                "step",
                "loss",
                "lr",
                "samples_per_s",
                "tokens_per_s",
                "audio_s_per_s",
                "epoch",
                "time",
            } <= set(r)
            assert r["world_size"] == nproc and r["loss"] > 0
            assert 0.0 <= r["data_wait_frac"] < 1.0  # time in next(loader), never more than the window
        assert any("val_loss" in r for r in recs if r["stage"] == stage)
    assert list((work / "logs" / "tensorboard").glob("events.out.tfevents.*"))


# ------------------------------------------------------------------- short stages, no validation


def test_a_short_stage_logs_its_loss_and_shards_without_validation_are_named(tiny, tmp_path):
    """A stage of 2 steps with log_every 10 still writes a loss record (the last, partial window),
    by epochs and by max_steps; shards whose items all went to train warn once per stage, naming
    shard.validation_fraction, and log no validation loss."""
    from tasks.run_file import no_validation_message

    index = make_shards(tmp_path / "data", {"train": SENTENCES[:4]}, per_shard=2)
    assert "shard.validation_fraction" in no_validation_message(
        index, 0.01
    ) and "(now 0.01)" in no_validation_message(index, 0.01)
    work = tmp_path / "work"
    train = train_config(tiny, max_batch_size=2, log_every=10, val_every=10, ckpt_every=10)
    batches = make_loader(
        ShardSpeechDataset(index, "train", batch_max_audio_s=8.0, max_batch_size=2, seed=0), 1
    )
    assert sum(1 for _ in batches) == 2  # one epoch: 2 steps
    by_epochs = launch(write_run(work, 1, train, index, max_steps=None, epochs=1), train)
    by_steps = launch(write_run(work, 2, train, index, max_steps=2), train)
    recs = records(work)
    for stage, proc in ((1, by_epochs), (2, by_steps)):
        assert read_stage(stage_dir(work, stage))["steps"] == 2
        losses = [r for r in recs if r["stage"] == stage and "loss" in r]
        assert [r["step"] for r in losses] == [2] and losses[0]["loss"] > 0 and losses[0]["run_samples"] == 4
        assert not [r for r in recs if r["stage"] == stage and r.get("val_loss") is not None]
        warned = [line for line in proc.stderr.splitlines() if "has no validation split" in line]
        assert len(warned) == 1 and "WARNING" in warned[0] and "shard.validation_fraction" in warned[0], (
            proc.stderr[-3000:]
        )
    assert (
        no_validation_message(
            make_shards(
                tmp_path / "both",
                {"train": SENTENCES[:2], "validation": VALIDATION_SENTENCES[:1]},
                per_shard=2,
            )
        )
        is None
    )


# ------------------------------------------------------------------------------ kill, resume


@pytest.mark.parametrize("nproc", [1, 2])
def test_killed_stage_resumes_from_its_checkpoint(tiny, shard_index, tmp_path, nproc):
    work = tmp_path / "work"
    train = train_config(tiny, ckpt_every=3, val_every=100, nproc_per_node=nproc)
    run_json = write_run(work, 2, train, shard_index, max_steps=30)
    proc = subprocess.Popen(
        launch_command(run_json, train),
        cwd=REPO,
        env=env_for(train),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    latest = stage_dir(work, 2) / "deepspeed" / "latest"
    deadline = time.time() + 180
    try:
        while not latest.is_file():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's group; its workers follow (PR_SET_PDEATHSIG)
        proc.wait()
    deadline = time.time() + 30
    while trainers_of(run_json):
        assert time.time() < deadline, "training processes outlived their killed launcher"
        time.sleep(0.1)
    assert read_stage(stage_dir(work, 2)) is None  # killed: not complete
    killed_at = max(r["step"] for r in records(work) if "loss" in r)
    assert killed_at < 30

    launch(run_json, train)
    info = read_stage(stage_dir(work, 2))
    assert info and info["steps"] == 30
    recs = records(work)
    starts = [i for i, r in enumerate(recs) if r.get("event") == "start"]
    assert len(starts) == 2
    resumed = recs[starts[1]]
    ckpt_step = resumed["step"]
    assert resumed["resumed_from"] == f"step{ckpt_step}" and 3 <= ckpt_step <= killed_at
    after = [r["step"] for r in recs[starts[1] :] if "loss" in r]
    assert after == list(range(ckpt_step + 1, 31))  # the step count continues from the checkpoint
    assert info["verify"]["frozen_changed"] == []

    # the resumed stream skipped exactly what was trained on: the samples of an uninterrupted run
    # (per epoch, every rank takes as many steps as the rank with the fewest batches)
    loaders = [
        make_loader(
            ShardSpeechDataset(
                shard_index,
                "train",
                rank=r,
                world_size=nproc,
                batch_max_audio_s=8.0,
                max_batch_size=4,
                seed=0,
            ),
            1,
        )
        for r in range(nproc)
    ]
    steps, samples = 0, 0
    while steps < 30:
        passes = [[len(b["keys"]) for b in loader] for loader in loaders]
        n = min(min(map(len, passes)), 30 - steps)
        steps += n
        samples += sum(sum(p[:n]) for p in passes)
    assert info["samples"] == samples


def trainers_of(run_json: Path) -> list[int]:
    """Live processes running ``tasks.train`` on ``run_json`` (from /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if b"tasks.train" in cmd and str(run_json).encode() in cmd and ") Z " not in stat:
                pids.append(int(d.name))
    return pids


# ----------------------------------------------------------------------------- config errors


def run_direct(run_json: Path, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.train", str(run_json)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, time.time() - t0


def test_config_errors_fail_fast_naming_the_key(tiny, shard_index, tmp_path):
    from llmasr.model import Adapter, save_adapter

    # a missing encoder checkpoint
    work = tmp_path / "a"
    bad = train_config(tiny, encoder=str(tmp_path / "nowhere" / "whisper"))
    proc, secs = run_direct(write_run(work, 1, bad, shard_index))
    assert proc.returncode == 2 and "train.encoder: no such checkpoint folder" in proc.stderr and secs < 20

    # stage 3 before stage 2
    train = train_config(tiny)
    proc, _ = run_direct(write_run(tmp_path / "b", 3, train, shard_index))
    assert proc.returncode == 2 and "model.adapter_path: no adapter at" in proc.stderr
    assert "stage 3 needs checkpoints/stage2 (run stage 2 first)" in proc.stderr

    # a stage-2 adapter built for another LLM width
    work = tmp_path / "c"
    save_adapter(Adapter(64, 32, hidden=32), stage_dir(work, 2) / "adapter")
    (stage_dir(work, 2) / "stage.json").write_text(json.dumps({"stage": 2, "complete": True}))
    proc, _ = run_direct(write_run(work, 3, train, shard_index))
    assert proc.returncode == 2 and "train.llm: hidden size 64 does not match" in proc.stderr

    # no shard index; an index without train samples
    proc, _ = run_direct(write_run(tmp_path / "d", 2, train, tmp_path / "missing" / "index.json"))
    assert proc.returncode == 2 and "shard_index: no such file" in proc.stderr
    only_val = tmp_path / "e" / "index.json"
    only_val.parent.mkdir()
    index = json.loads(shard_index.read_text())
    only_val.write_text(
        json.dumps({**index, "shards": [e for e in index["shards"] if e["split"] != "train"]})
    )
    proc, _ = run_direct(write_run(tmp_path / "e", 2, train, only_val))
    assert proc.returncode == 2 and "has no train samples" in proc.stderr

    # an error the model module raises while building, reported with its key (one process, no launcher)
    work = tmp_path / "f"
    save_adapter(Adapter(64, 64, hidden=32), stage_dir(work, 2) / "adapter")
    (stage_dir(work, 2) / "stage.json").write_text(json.dumps({"stage": 2, "complete": True}))
    proc, _ = run_direct(
        write_run(work, 3, train_config(tiny, lora=LoraConfig(target_modules=["c_attn"])), shard_index)
    )
    assert proc.returncode == 2 and "train.lora.target_modules:" in proc.stderr and "c_attn" in proc.stderr, (
        proc.stderr[-2000:]
    )
    # settings the stage-2 adapter contradicts: the first one, named (a message of the model's own)
    proc, _ = run_direct(write_run(work, 3, train_config(tiny, adapter_hidden=16), shard_index))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "train.adapter_hidden: the adapter at" in proc.stderr
    assert "was trained with adapter_hidden=32, the settings say 16" in proc.stderr


def check_error(run_json: Path) -> str:
    """check_run's TrainConfigError message for RUN.json (in-process: no launch)."""
    from tasks.run_file import TrainConfigError, check_run, read_run_config

    with pytest.raises(TrainConfigError) as err:
        check_run(read_run_config(run_json))
    return str(err.value)


def test_check_run_names_the_key_for_world_size_zero_3_and_stage_2(tiny, shard_index, tmp_path):
    from tasks.run_file import check_run, read_run_config

    samples = sum(
        e["samples"] for e in json.loads(shard_index.read_text())["shards"] if e["split"] == "train"
    )
    assert samples == 8
    check_run(
        read_run_config(write_run(tmp_path / "ok", 2, train_config(tiny, nproc_per_node=8), shard_index))
    )

    # more processes than train samples: a rank would get no batch
    msg = check_error(write_run(tmp_path / "a", 2, train_config(tiny, nproc_per_node=9), shard_index))
    assert msg.startswith("train.nproc_per_node: 9 processes, but") and "only 8 train samples" in msg
    # with a hostfile the processes are its slots, summed
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=5\nnode-b slots=4\n")
    multi = train_config(tiny, launcher="deepspeed", hostfile=str(hostfile), nproc_per_node=1)
    assert check_error(write_run(tmp_path / "b", 2, multi, shard_index)).startswith(
        "train.hostfile: its slots start 9 processes"
    )

    # ZeRO-3: refused, naming the DeepSpeed config
    zero3 = tmp_path / "zero3.json"
    zero3.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    msg = check_error(
        write_run(tmp_path / "c", 2, train_config(tiny, deepspeed_config=str(zero3)), shard_index)
    )
    assert (
        msg.startswith(f"train.deepspeed_config: {zero3} sets zero_optimization.stage 3")
        and "ZeRO stages 0-2" in msg
    )

    # stage 3 without stage 2's adapter: the key first
    msg = check_error(write_run(tmp_path / "d", 3, train_config(tiny), shard_index))
    assert msg.startswith("model.adapter_path: no adapter at") and "run stage 2 first" in msg
    from llmasr.model import Adapter, save_adapter

    save_adapter(Adapter(64, 32, hidden=32), stage_dir(tmp_path / "e", 2) / "adapter")  # no stage.json
    msg = check_error(write_run(tmp_path / "e", 3, train_config(tiny), shard_index))
    assert msg.startswith("model.adapter_path: ") and "is not complete" in msg

    # a stage 2 an earlier version trained (projector/: projector.json + projector.safetensors):
    # stage 3 starts from it, and check_run reads its widths
    old2 = stage_dir(tmp_path / "f", 2)
    save_adapter(Adapter(64, 32, hidden=32), old2 / "projector")
    for suffix in ("json", "safetensors"):
        (old2 / "projector" / f"adapter.{suffix}").rename(old2 / "projector" / f"projector.{suffix}")
    write_stage(old2, stage=2, key="old")
    run = write_run(tmp_path / "f", 3, train_config(tiny), shard_index)
    assert json.loads(run.read_text())["model"]["adapter_path"] == str(old2 / "projector")
    msg = check_error(run)  # the tiny LLM is 64 wide: the old adapter's 32 is read and refused
    assert msg.startswith("train.llm: hidden size 64 does not match the adapter's output width 32")


def test_out_dir_of_a_new_run_keeps_no_stale_export_or_run_shape(tmp_path):
    from tasks.export import clear_stage
    from tasks.train_ckpt import CKPT_META, claim_checkpoints, resume_problem

    # an earlier stage-3 run's exports (merged_llm with train.merge_lora), half-swapped folders included
    out = stage_dir(tmp_path, 3)
    for name in ("lora", "adapter", "projector", "merged_llm", ".tmp-lora", ".old-merged_llm"):
        (out / name).mkdir(parents=True)
        (out / name / "f").write_text("old")
    (out / "model.json").write_text("{}")
    (out / "stage.json").write_text(json.dumps({"stage": 3, "key": "old", "complete": True}))
    (out / "deepspeed").mkdir()
    clear_stage(out, 3)
    assert sorted(p.name for p in out.iterdir()) == ["deepspeed"]  # checkpoints: claim_checkpoints's call

    # a run died before its first checkpoint: its run.json must not bind the next run's shape
    ckpt = out / "deepspeed"
    claim_checkpoints(ckpt, "k", 3, world=1, num_workers=2)
    assert json.loads((ckpt / CKPT_META).read_text())["world_size"] == 1
    claim_checkpoints(ckpt, "k", 3, world=2, num_workers=2)  # same key, other world size, nothing to resume
    assert json.loads((ckpt / CKPT_META).read_text())["world_size"] == 2
    (ckpt / "latest").write_text("step2")  # that run checkpoints, then dies
    claim_checkpoints(ckpt, "k", 3, world=2, num_workers=2)
    assert resume_problem(ckpt, 2, 2) is None
    # a checkpoint to resume keeps its run.json; another shape is refused, naming the keys
    claim_checkpoints(ckpt, "k", 3, world=4, num_workers=2)
    assert json.loads((ckpt / CKPT_META).read_text())["world_size"] == 2
    assert resume_problem(ckpt, 4, 2).startswith("train.nproc_per_node / train.num_workers: ")
    # another key: its checkpoints go
    claim_checkpoints(ckpt, "other", 3, world=4, num_workers=2)
    assert not (ckpt / "latest").exists() and json.loads((ckpt / CKPT_META).read_text())["key"] == "other"


def test_stage_1_counts_the_labels_whisper_scores():
    from llmasr.model import IGNORE_INDEX, whisper_labels
    from tasks.train_log import whisper_label_count

    sot, nots, eot = 50258, 50363, 50257
    ids = [[sot, nots, 10, 11, 12, eot], [sot, nots, 13, eot]]  # WhisperTargets' form: start .. <|endoftext|>
    labels = whisper_labels(ids, sot)  # (2, 5): the start token dropped
    assert whisper_label_count(ids, sot) == int((labels != IGNORE_INDEX).sum()) == 8
    assert whisper_label_count([[nots, 10, eot]], sot) == 3  # no start token: nothing dropped


def test_run_config_for_the_flow(tmp_path):
    from llmasr.config import load_config
    from tasks.run_file import RunConfig, read_run_config, run_config_for

    cfg = load_config(profile="demo")
    rc = run_config_for(cfg, 3, "abc", work_dir=tmp_path)
    assert rc.out_dir == str(stage_dir(tmp_path, 3)) and rc.shard_index == str(
        tmp_path.resolve() / "shards" / "index.json"
    )
    assert rc.model.adapter_path == str(stage_dir(tmp_path, 2) / "adapter")
    assert rc.model.encoder == str(Path(cfg.work_dir) / "demo-models/whisper")  # stage 1 has not run here
    assert rc.stage_cfg == cfg.train.stage3 and rc.train == cfg.train and rc.train.launcher == "torchrun"
    assert rc.metrics_log == str(tmp_path / "logs" / "train.jsonl")
    path = write_run_config(tmp_path / "RUN.json", **rc.to_dict())
    assert read_run_config(path) == rc and isinstance(rc, RunConfig)
    # a RUN.json an earlier version wrote: the adapter named the projector, in train and model
    former = {"adapter": "projector", "adapter_hidden": "projector_hidden", "adapter_path": "projector_path"}
    old = rc.to_dict()
    old["train"] = {former.get(k, k): v for k, v in old["train"].items()}
    old["model"] = {former.get(k, k): v for k, v in old["model"].items()}
    assert "projector_hidden" in old["train"] and "projector_path" in old["model"]
    (tmp_path / "OLD.json").write_text(json.dumps(old))
    assert read_run_config(tmp_path / "OLD.json") == rc
    cmd = launch_command(path, cfg.train, python="py")
    assert cmd == [
        "py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        "-m",
        "tasks.train",
        str(path),
    ]
    ds = launch_command(path, {"launcher": "deepspeed", "nproc_per_node": 8}, python="py")
    assert ds == [
        "py",
        "-m",
        "deepspeed.launcher.runner",
        "--master_port",
        "29500",
        "--num_gpus",
        "8",
        "--module",
        "tasks.train",
        str(path),
    ]
    with pytest.raises(ValueError, match="unknown keys"):
        write_run_config(tmp_path / "bad.json", **rc.to_dict(), extra=1)


def test_a_bad_run_json_value_names_its_key(tmp_path):
    """RUN.json is validated when read: the sections are TrainConfig, StageConfig and LLMASRConfig,
    and the message starts with the key at fault (stage_cfg is train.stage<N>)."""
    from llmasr.config import LLMASRConfig, load_config
    from tasks.run_file import RunConfig, TrainConfigError, read_run_config, run_config_for

    cfg = load_config(profile="demo")
    rc = run_config_for(cfg, 2, "k", work_dir=tmp_path)
    assert isinstance(rc.train, TrainConfig) and isinstance(rc.stage_cfg, StageConfig)
    assert isinstance(rc.model, LLMASRConfig) and rc.stage_cfg == cfg.train.stage2
    good = json.loads(write_run_config(tmp_path / "RUN.json", **rc.to_dict()).read_text())
    assert good == rc.model_dump(mode="json") and good["stage_cfg"]["lr"] == cfg.train.stage2.lr

    def error(change) -> str:
        data = json.loads(json.dumps(good))
        change(data)
        (tmp_path / "bad.json").write_text(json.dumps(data))
        with pytest.raises(TrainConfigError) as err:
            read_run_config(tmp_path / "bad.json")
        return str(err.value)

    assert error(lambda d: d["train"].update(grad_clip=-1)).startswith("train.grad_clip: ")
    assert error(lambda d: d["train"].update(lr=1e-4)) == "train.lr: unknown key"  # lr is per stage
    assert error(lambda d: d["train"]["stage3"].update(lr=0)).startswith("train.stage3.lr: ")
    msg = error(lambda d: d["stage_cfg"].update(lr="fast"))
    assert msg.startswith("train.stage2.lr: ") and "'fast'" in msg
    assert error(lambda d: d["stage_cfg"].update(lrr=1)) == "train.stage2.lrr: unknown key"
    # the key, not the union member pydantic tried (model.encoder.str)
    assert error(lambda d: d["model"].update(encoder=5)).startswith("model.encoder: ")
    assert error(lambda d: d["model"]["lora"].update(rank=0)).startswith("model.lora.rank: ")
    assert error(lambda d: d["model"].pop("llm")) == "model.llm: Field required"
    msg = error(lambda d: d.update(extra=1))
    assert msg.startswith("RUN.json: unknown keys ['extra']; known: [") and "'stage_cfg'" in msg
    assert error(lambda d: (d.pop("key"), d.pop("train"))) == "RUN.json: missing keys ['key', 'train']"
    # RunConfig is the schema: it takes the sections as objects or as their dicts
    assert RunConfig(**good) == rc == RunConfig.from_dict({**good, "train": cfg.train})


@pytest.mark.parametrize("allowed", [True, False])
def test_trainer_sets_cudnn_attention_from_config(tmp_path, allowed):
    """train.cudnn_attention reaches torch's SDPA backend switch when the trainer starts."""
    from llmasr.config import load_config
    from tasks.run_file import run_config_for
    from tasks.train import Trainer

    cfg = load_config(profile="demo", overrides=[f"train.cudnn_attention={str(allowed).lower()}"])
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(not allowed)
        Trainer(run_config_for(cfg, 2, "k", work_dir=tmp_path))
        assert torch.backends.cuda.cudnn_sdp_enabled() is allowed
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


# ---------------------------------------------------------------------------------- learning

LEARN = [
    "The weather was warm today.",
    "She packed her bags.",
    "Our team finished the report.",
    "He plays the guitar.",
    "The museum opens at nine.",
    "We planted tomatoes in the garden.",
]


def test_stages_2_and_3_learn_a_small_set(tiny, tmp_path):
    """Prompt, label masking, adapter and greedy decoding agree: the model reproduces its training
    transcripts (train == the set decoded here)."""
    from tasks.train_data import LLMTargets, ShardSpeechDataset

    index = make_shards(tmp_path / "data", {"train": LEARN}, per_shard=2, speed=220)
    work = tmp_path / "work"
    train = train_config(
        tiny,
        batch_max_audio_s=30.0,
        max_batch_size=8,
        num_workers=0,
        log_every=10,
        val_every=1000,
        ckpt_every=1000,
        grad_clip=1.0,
    )
    launch(
        write_run(work, 2, train, index, lr=1e-2, max_steps=20, warmup_steps=2, schedule="constant"), train
    )
    launch(
        write_run(work, 3, train, index, lr=1e-2, max_steps=60, warmup_steps=2, schedule="constant"), train
    )

    model = load_llmasr(stage_dir(work, 3))
    refs, hyps = [], []
    for batch in ShardSpeechDataset(
        index, "train", targets=LLMTargets(model.tokenizer), batch_max_audio_s=30.0, shuffle=False
    ):
        hyps += model.generate(batch["input_features"], batch["feature_lengths"], max_new_tokens=16)
        refs += batch["texts"]
    assert sorted(refs) == sorted(LEARN)
    wer = jiwer.wer([normalize(r) for r in refs], [normalize(h) or "<empty>" for h in hyps])
    assert wer <= 0.10, list(zip(refs, hyps))
    losses = [r["loss"] for r in records(work) if r.get("stage") == 3 and "loss" in r]
    assert losses[-1] < losses[0]
