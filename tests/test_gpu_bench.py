"""The GPU benches still run: their --cpu-smoke mode drives the same code (the real Trainer with
synthetic batches; LLMASRSystem through run_system) with tiny models on the CPU.  A session lent a
GPU has minutes of device time for one call of bench/gpu_run.sh; this is what keeps that call from
dying on a change to the trainer or the decoder.  The numbers are not looked at, only that they exist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    env.pop("OUT", None)  # the device tool's output folder: not here
    proc = subprocess.run([sys.executable, f"bench/{script}", "--cpu-smoke", "--out", str(out), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, (
        f"{script} exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    )
    return json.loads(out.read_text())


def test_gpu_train_bench_runs_the_trainer(tmp_path):
    r = _run("gpu_train_bench.py", tmp_path / "train.json", "--work", str(tmp_path / "work"))
    assert r["steps"] == 20 and r["zero_stage"] == 2 and r["precision"] == "fp32"
    assert r["steady"]["samples_per_s"] > 0 and r["steady"]["tokens_per_s"] > 0
    # model FLOPs on any device; MFU needs a known GPU
    assert r["steady"]["model_tflops"] > 0 and "mfu" not in r["steady"]
    assert 0 < r["trainable_params"] < r["params"]  # LoRA + adapter only: stage 3


def test_gpu_decode_bench_runs_every_configuration(tmp_path):
    r = _run("gpu_decode_bench.py", tmp_path / "decode.json")
    assert [rep["order"] for rep in r["reps"]] and len(r["reps"]) == 1
    results = r["reps"][0]["results"]
    assert set(results) == {"beam8 batch8", "greedy batch8", "beam8 batch1", "greedy batch1"}
    for name, res in results.items():
        # 4 tokens forced per piece
        assert res["failures"] == 0 and res["tokens"] == 4 * r["audio"]["pieces"], name
    # every generate call is timed: the warm-up's one batch per configuration, then the rep's batches
    assert [c["config"] for c in r["generate_calls"]][:4] == [f"warm-up {n}" for n in results]
    assert (
        sum(c["batch"] for c in r["generate_calls"] if c["config"] == "rep 1 greedy batch1")
        == r["audio"]["pieces"]
    )


def test_gpu_decode_bench_merged_lora_and_chosen_configurations(tmp_path):
    r = _run(
        "gpu_decode_bench.py",
        tmp_path / "decode.json",
        "--merge-lora",
        "--sdpa",
        "no-cudnn",
        "--configs",
        "greedy batch32,beam4 batch2",
    )
    assert r["lora"] == "merged" and r["sdpa"] == "no-cudnn"
    results = r["reps"][0]["results"]
    assert set(results) == {"greedy batch32", "beam4 batch2"}
    assert all(res["failures"] == 0 and res["tokens"] == 4 * r["audio"]["pieces"] for res in results.values())
    assert {c["beams"] for c in r["generate_calls"] if c["config"] == "rep 1 beam4 batch2"} == {4}
    assert max(c["batch"] for c in r["generate_calls"] if c["config"] == "rep 1 beam4 batch2") == 2


def test_gpu_decode_bench_rejects_a_malformed_configuration(tmp_path):
    proc = subprocess.run([sys.executable, "bench/gpu_decode_bench.py", "--cpu-smoke", "--configs", "beam8"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0 and "is not '<greedy|beamN> batchM'" in proc.stderr
