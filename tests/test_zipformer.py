"""The Zipformer-Transducer baseline on real espeak-ng shards: a tiny model trained by
tasks/zipformer_train.py memorises a small set (its loss falls, modified beam search reproduces the
transcripts), a SIGKILLed training resumes with its step count, 2 data-parallel processes under
torchrun train, resume and fail as the launcher promises, and evaluation scores it as the
``zipformer`` system beside the others.

    .venv/bin/pytest tests/test_zipformer.py
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import jiwer
import pytest
import soundfile as sf

from llmasr.config import EvalConfig, ZipformerConfig, load_config
from llmasr.layout import WorkLayout
from llmasr.text import normalize
from tasks.launch import TrainingProcessError
from tasks.zipformer_decode import ZipformerSystem, read_model_json, zipformer_dir
from tasks.zipformer_train import launch_spec, launch_zipformer, load_zipformer, log_file, train_zipformer
from test_train_data import VALIDATION_SENTENCES, make_shards

REPO = Path(__file__).resolve().parents[1]
LEARN = [
    "She packed her bags.",
    "Our team finished the report.",
    "He plays the guitar.",
    "We planted tomatoes in the garden.",
]
LEARN_STEPS = 200


def tiny_config(**kw) -> ZipformerConfig:
    """The demo profile's tiny Zipformer, trained one utterance per step (no padding: what the model
    learns of an utterance cannot depend on what it was batched with) at a constant rate."""
    demo = load_config(profile="demo").zipformer.model_dump()
    demo.update(
        vocab_size=64,
        schedule_scale=100,  # 200 steps reach the end of the encoder's schedules (train mode = eval mode)
        ctc_loss_scale=0.5,  # the encoder learns to tell the sentences apart sooner
        lr_batches=1e6,
        lr_epochs=1e6,
        batch_max_audio_s=60.0,
        max_batch_size=1,
        log_every=10,
        val_every=100_000,
        ckpt_every=100_000,
        epochs=10_000,
    )
    demo.update(kw)
    return ZipformerConfig(**demo)


def records(work: Path) -> list[dict]:
    return [json.loads(line) for line in log_file(work).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A work dir with espeak-ng shards of LEARN (train) and one validation sentence."""
    work = tmp_path_factory.mktemp("zipformer") / "work"
    make_shards(work, {"train": LEARN, "validation": VALIDATION_SENTENCES[:1]}, per_shard=2, speed=220)
    return work


@pytest.fixture(scope="module")
def learned(shards):
    work = shards
    index = WorkLayout(work).shard_index
    cfg = tiny_config(max_steps=LEARN_STEPS)
    record = train_zipformer(index, zipformer_dir(work), log_file(work), cfg)
    return work, cfg, record


def test_loss_falls_and_every_record_names_the_model(learned):
    work, _, record = learned
    recs = records(work)
    assert all(r["model"] == "zipformer" for r in recs)
    assert recs[0]["event"] == "start" and recs[0]["resumed_from"] is None and recs[-1]["event"] == "end"
    losses = [r["loss"] for r in recs if r.get("loss") is not None]
    assert len(losses) >= LEARN_STEPS // 10 and losses[-1] < losses[0] / 20, losses
    assert any(r.get("val_loss") is not None for r in recs)
    assert record["steps"] == LEARN_STEPS and (zipformer_dir(work) / "model.pt").is_file()
    assert not (zipformer_dir(work) / "ckpt").exists()  # the resumable state goes once training ends


def test_a_small_set_is_memorised(learned):
    """Each training utterance, decoded alone by the evaluation system, gives back its transcript."""
    work, _, _ = learned
    system = ZipformerSystem("zipformer", zipformer_dir(work), EvalConfig(device="cpu"))
    audio_files = sorted(WorkLayout(work).root.glob("raw/tra*.flac"))
    assert len(audio_files) == len(LEARN)
    audios = [sf.read(str(p), dtype="float32")[0] for p in audio_files]
    hyps = system.decode(audios)
    refs = [LEARN[int(p.stem[3:6])] for p in audio_files]
    wer = jiwer.wer([normalize(r) for r in refs], [normalize(h) or "<empty>" for h in hyps])
    assert wer <= 0.10, list(zip(refs, hyps))


def test_evaluation_scores_the_zipformer_beside_the_others(prefect_harness, learned, tmp_path):
    from flows.evaluate import evaluate_flow

    work, _, _ = learned
    manifest = tmp_path / "learn.jsonl"
    rows = [
        {"id": p.stem, "audio": str(p), "text": LEARN[int(p.stem[3:6])]}
        for p in sorted(work.glob("raw/tra*"))
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    state = evaluate_flow(
        work_dir=str(work),
        test_sets=[f"learn={manifest}"],
        baselines=[],
        overrides=["eval.device=cpu"],
        return_state=True,
    )
    assert state.is_completed(), state.message
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    row = metrics["results"]["learn"]["zipformer"]
    assert row["utterances"] == len(LEARN) and row["words"] > 0
    assert isinstance(row["n_wer"], float) and row["n_wer"] <= 0.10 and row["rtf"] > 0
    assert "| learn | zipformer |" in (work / "eval" / "report.md").read_text()
    assert any(s["name"] == "zipformer" and s["kind"] == "zipformer" for s in metrics["systems"])


def test_a_killed_training_resumes_and_its_step_count_continues(shards, tmp_path):
    """SIGKILL after a checkpoint; the rerun starts from it (its start record says where), logs
    steps after it only, and ends at max_steps."""
    work = tmp_path / "work"
    shutil.copytree(shards / "shards", work / "shards")
    steps, ckpt_every = 40, 10
    args = [
        sys.executable,
        "-m",
        "tasks.zipformer_train",
        "--profile",
        "demo",
        "--work-dir",
        str(work),
        "--set",
        f"zipformer.max_steps={steps}",
        "--set",
        f"zipformer.ckpt_every={ckpt_every}",
        "--set",
        "zipformer.log_every=1",
        "--set",
        "zipformer.max_batch_size=1",
        "--set",
        "zipformer.epochs=1000",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpt = zipformer_dir(work) / "ckpt" / "last.pt"
    deadline = time.monotonic() + 240
    while not ckpt.is_file():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_model_json(zipformer_dir(work)) is None
    killed_at = max(r["step"] for r in records(work) if r.get("loss") is not None)
    assert killed_at >= ckpt_every

    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    recs = records(work)
    starts = [i for i, r in enumerate(recs) if r.get("event") == "start"]
    assert len(starts) == 2
    resumed = recs[starts[1]]["resumed_from"]
    assert resumed is not None and resumed % ckpt_every == 0 and ckpt_every <= resumed <= killed_at
    after = [r["step"] for r in recs[starts[1] :] if r.get("loss") is not None]
    assert after[0] == resumed + 1 and after == sorted(after) and after[-1] == steps
    assert read_model_json(zipformer_dir(work))["steps"] == steps


def test_the_flow_trains_once_and_publishes_the_loss_curve(prefect_harness, shards, tmp_path):
    """The zipformer flow (as the pipeline runs it): trained, its beam written for evaluation, the
    loss curve saved; a rerun with the same shards and settings trains nothing (a cached task), a new
    beam only rewrites decode.json."""
    from flows.zipformer import zipformer_flow

    work = tmp_path / "work"
    shutil.copytree(shards / "shards", work / "shards")
    overrides = ["zipformer.max_steps=4", "zipformer.max_batch_size=2", "zipformer.log_every=1"]
    record = zipformer_flow(profile="demo", work_dir=str(work), overrides=[*overrides, "zipformer.beam=2"])
    assert record["steps"] == 4
    folder = zipformer_dir(work)
    assert json.loads((folder / "decode.json").read_text()) == {"beam": 2}
    assert (work / "reports" / "zipformer_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = zipformer_flow(profile="demo", work_dir=str(work), overrides=[*overrides, "zipformer.beam=3"])
    assert again == record
    assert [r.get("event") for r in records(work)].count("start") == 1
    assert json.loads((folder / "decode.json").read_text()) == {"beam": 3}
    assert zipformer_flow(profile="demo", work_dir=str(work), overrides=["zipformer.enabled=false"]) is None


def two_process_config(**kw) -> ZipformerConfig:
    """The tiny Zipformer on 2 CPU processes (gloo), one utterance per rank and step: 2 steps an
    epoch on LEARN's 2 training shards, one shard per rank."""
    return tiny_config(nproc_per_node=2, device="cpu", log_every=1, **kw)


def test_two_processes_train_resume_after_a_kill_and_load(shards, tmp_path):
    """torchrun with 2 gloo ranks, as the flow launches it: the launcher's process group SIGKILLed
    after a checkpoint; the relaunch resumes from it with the step count going on, every record says
    world size 2, and the model rank 0 wrote loads."""
    work = tmp_path / "work"
    shutil.copytree(shards / "shards", work / "shards")
    steps, ckpt_every = 10, 2
    cfg = two_process_config(max_steps=steps, ckpt_every=ckpt_every)
    cmd, env, log_path = launch_spec(work, cfg)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ckpt = zipformer_dir(work) / "ckpt" / "last.pt"
    with open(tmp_path / "killed.log", "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 240
        while not ckpt.is_file():
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the ranks die with their launcher (PR_SET_PDEATHSIG)
        proc.wait()
    assert read_model_json(zipformer_dir(work)) is None
    killed_at = max(r["step"] for r in records(work) if r.get("loss") is not None)
    assert killed_at >= ckpt_every

    record = launch_zipformer(work, cfg)
    assert record["steps"] == steps and record["world_size"] == 2
    recs = records(work)
    starts = [r for r in recs if r.get("event") == "start"]
    assert len(starts) == 2 and all(r["world_size"] == 2 for r in starts)
    resumed = starts[1]["resumed_from"]
    assert resumed is not None and resumed % ckpt_every == 0 and ckpt_every <= resumed <= killed_at
    after = [r["step"] for r in recs[recs.index(starts[1]) :] if r.get("loss") is not None]
    assert after[0] == resumed + 1 and after == sorted(after) and after[-1] == steps
    assert "--nproc_per_node 2" in log_path.read_text()
    model, bpe = load_zipformer(zipformer_dir(work))
    assert sum(p.numel() for p in model.parameters()) == record["params"] and bpe.vocab_size > 1


def test_a_failing_rank_fails_the_launch_with_the_log_tail(shards, tmp_path):
    """One training shard's audio is not FLAC: the rank that reads it fails, the launcher stops the
    other, and launch_zipformer raises TrainingProcessError ending with the log's tail."""
    work = tmp_path / "work"
    shutil.copytree(shards / "shards", work / "shards")
    bad = sorted((work / "shards").glob("train-*.tar"))[0]
    with tarfile.open(bad) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(bad, "w") as tar:
        for m, data in members:
            data = b"not audio" * 10 if m.name.endswith(".flac") else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    with pytest.raises(TrainingProcessError, match=r"training failed \(exit \d+\); last lines") as err:
        launch_zipformer(work, two_process_config(max_steps=4))
    assert "Format not recognised" in str(err.value), str(err.value)[-3000:]
    assert read_model_json(zipformer_dir(work)) is None


def test_the_command_line_starts_the_launcher_for_several_processes(shards, tmp_path):
    """``python -m tasks.zipformer_train --set zipformer.nproc_per_node=2`` outside torchrun runs the
    launcher itself: 2 ranks train, as the flow's launch does."""
    work = tmp_path / "work"
    shutil.copytree(shards / "shards", work / "shards")
    args = [sys.executable, "-m", "tasks.zipformer_train", "--profile", "demo", "--work-dir", str(work)]
    for kv in ("nproc_per_node=2", "max_steps=2", "max_batch_size=1", "log_every=1", "device=cpu"):
        args += ["--set", f"zipformer.{kv}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert read_model_json(zipformer_dir(work))["world_size"] == 2
    assert (
        "torch.distributed.run --standalone --nproc_per_node 2"
        in (work / "logs" / "zipformer.log").read_text()
    )
