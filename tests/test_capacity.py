"""bench/capacity.py: the capacity table's arithmetic, on tiny inputs (no GPU, no measurement)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("capacity", REPO / "bench" / "capacity.py")
capacity = importlib.util.module_from_spec(_spec)
sys.modules["capacity"] = capacity  # dataclasses look their module up while the file runs
_spec.loader.exec_module(capacity)

# the demo profile's tiny Zipformer in place of Zipformer-M (whose forward takes seconds on a CPU)
TINY_ZIPFORMER = {
    "downsampling_factor": [1, 2],
    "num_encoder_layers": [1, 1],
    "encoder_dim": [64, 96],
    "encoder_unmasked_dim": [64, 64],
    "feedforward_dim": [128, 192],
    "num_heads": [4, 4],
    "cnn_module_kernel": [15, 15],
    "query_head_dim": 16,
    "value_head_dim": 8,
    "pos_dim": 16,
    "decoder_dim": 64,
    "joiner_dim": 64,
    "vocab_size": 128,
}
TINY_SETS = [x for k, v in TINY_ZIPFORMER.items() for x in ("--set", f"zipformer.{k}={json.dumps(v)}")]
FIXED = ["--no-measure", "--flac-mb-per-h", "60", "--shard-overhead-bytes", "2000", *TINY_SETS]


def run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"cap{len(list(tmp_path.iterdir()))}.json"
    assert capacity.main([*FIXED, *args, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def rows(res: dict) -> dict[str, dict]:
    return {r["row"].split(" (")[0]: r for r in res["rows"]}


def storage(res: dict) -> dict[str, float]:
    return {r["row"].split(" (")[0]: r["bytes"] for r in res["storage"]}


def test_labelling_is_hours_over_rtfx(tmp_path):
    res = run(tmp_path, "--hours", "10", "--label-rtfx", "50")
    lab = rows(res)["labelling"]
    assert lab["gpu_hours"] == pytest.approx(10 / 50)
    assert lab["days"] == pytest.approx(10 / 50 / 8 / 24)
    assert any(a["name"].startswith("labelling RTFx") and a["source"] == "given" for a in res["assumptions"])
    default = run(tmp_path, "--hours", "10")  # no measured RTFx: the assumption, labelled as one
    assert any(
        a["name"].startswith("labelling RTFx") and a["source"] == "assumed" for a in default["assumptions"]
    )


def test_doubling_hours_doubles_gpu_hours_and_storage(tmp_path):
    one, two = run(tmp_path, "--hours", "10"), run(tmp_path, "--hours", "20")
    for name, r in rows(one).items():
        assert rows(two)[name]["gpu_hours"] == pytest.approx(2 * r["gpu_hours"]), name
    for name in ("raw audio", "shards"):
        assert storage(two)[name] == pytest.approx(2 * storage(one)[name]), name
    assert storage(two)["checkpoints"] == storage(one)["checkpoints"]  # model size, not data size
    assert storage(one)["raw audio"] == pytest.approx(10 * 60e6)  # hours x MB/h
    samples = 10 * 0.7 * 3600 / 12.0  # kept audio / mean segment
    assert storage(one)["shards"] == pytest.approx(10 * 0.7 * 60e6 + samples * 2000)


def test_given_throughput_and_epochs_from_the_config(tmp_path):
    from llmasr.config import load_config

    cfg = load_config()
    res = run(tmp_path, "--hours", "100", "--kept-fraction", "0.5", "--audio-s-per-s", "2=360")
    assert res["epochs"] == {str(s): getattr(cfg.train, f"stage{s}").epochs for s in (1, 2, 3)}
    s2 = rows(res)["stage 2"]
    assert s2["gpu_hours"] == pytest.approx(100 * 0.5 * 3600 * cfg.train.stage2.epochs / 360 / 3600)
    assert s2["days"] == pytest.approx(s2["gpu_hours"] / (8 * 0.95) / 24)
    tripled = run(
        tmp_path,
        "--hours",
        "100",
        "--kept-fraction",
        "0.5",
        "--audio-s-per-s",
        "2=360",
        "--set",
        "train.stage2.epochs=3",
    )
    assert tripled["epochs"]["2"] == 3
    assert rows(tripled)["stage 2"]["gpu_hours"] == pytest.approx(
        3 / cfg.train.stage2.epochs * s2["gpu_hours"]
    )
    assert rows(tripled)["stage 1"]["gpu_hours"] == pytest.approx(rows(res)["stage 1"]["gpu_hours"])
    total = rows(res)["total"]
    assert total["gpu_hours"] == pytest.approx(
        sum(r["gpu_hours"] for n, r in rows(res).items() if n != "total")
    )


def test_loader_check_scales_with_workers_and_stage_speed(tmp_path):
    # the loader rate is the one measured by bench/train_bench.py (committed in bench/results/)
    six = run(tmp_path, "--hours", "10", "--set", "train.num_workers=6", "--audio-s-per-s", "1=2000")
    three = run(tmp_path, "--hours", "10", "--set", "train.num_workers=3", "--audio-s-per-s", "1=2000")
    lo = six["loader"]
    assert lo["ratios"]["1"] == pytest.approx(6 * lo["per_worker"] / 2000)
    for s in ("1", "2", "3"):
        assert three["loader"]["ratios"][s] == pytest.approx(lo["ratios"][s] / 2)
        assert lo["ratios"][s] == pytest.approx(
            6 * lo["per_worker"] / rows(six)[f"stage {s}"]["audio_s_per_s"]
        )
    assert lo["need_audio_s_per_s"] == 2000 and lo["workers"] == -(-2000 // lo["per_worker"])


def test_flops_mfu_and_the_frozen_parts(tmp_path):
    base = rows(run(tmp_path, "--hours", "10", "--mfu", "0.4"))
    half = rows(run(tmp_path, "--hours", "10", "--mfu", "0.2"))
    for s in ("stage 1", "stage 2", "stage 3"):
        assert half[s]["gpu_hours"] == pytest.approx(2 * base[s]["gpu_hours"])
        assert base[s]["audio_s_per_s"] == pytest.approx(0.4 * 989e12 / (base[s]["gflop_per_audio_s"] * 1e9))
    # stage 2: frozen LLM forward + activation gradients (4N per position) dominate; encoder forward only (2N
    # per frame)
    from llmasr.config import load_config

    m = capacity.model_counts(load_config().train)
    # Qwen2-7B, Whisper large-v2 encoder
    assert 7.6e9 < m["llm_params"] < 7.8e9 and 6.3e8 < m["encoder_params"] < 6.4e8
    r = {
        "encoder_fps": 50.0,
        "downsample_k": 2,
        "segment_s": 10.0,
        "prompt_tokens": 25,
        "whisper_special_tokens": 5,
        "text_tps": 0.0,
    }
    f2, f3 = capacity.flops_per_audio_s(2, m, r), capacity.flops_per_audio_s(3, m, r)
    pos = 25 + 26 / 10.0
    # without attention
    low = 2 * m["encoder_compute"] * 50 + 6 * m["adapter_params"] * 25 + 4 * m["llm_compute"] * pos
    assert low < f2 < 1.1 * low
    assert f3 - f2 == pytest.approx(6 * m["lora_params"] * pos)
    assert capacity.flops_per_audio_s(1, m, r) > 6 * m["encoder_compute"] * 50  # the encoder trains: 6N


def test_from_gpu_bench(tmp_path):
    bench = {
        "gpu": "NVIDIA H100 80GB HBM3",
        "peak_bf16_flops": 989e12,
        "args": {"llm": "0.5b", "encoder": "large-v2", "batch": 16, "audio_s": 8.0},
        "params": 1_137_000_000,
        "encoder_params": 635_000_000,
        "trainable_params": 8_160_000,
        "steady": {
            "samples_per_s": 60.0,
            "audio_s_per_s": 480.0,
            "encoder_frames_per_s": 24000.0,
            "decoder_positions_per_s": 9600.0,
            "mfu": 0.12,
        },
    }
    p1, p2 = tmp_path / "b1.json", tmp_path / "b2.json"
    p1.write_text(json.dumps(bench))
    steady2 = {k: (2 * v if k.endswith("_per_s") else v) for k, v in bench["steady"].items()}
    p2.write_text(json.dumps({**bench, "steady": steady2}))
    one, two = (
        run(tmp_path, "--hours", "10", "--from-gpu-bench", str(p1)),
        run(tmp_path, "--hours", "10", "--from-gpu-bench", str(p2)),
    )
    assert two["gpu_bench"]["mfu"] == pytest.approx(2 * one["gpu_bench"]["mfu"])
    assert 0 < one["gpu_bench"]["mfu"] < 0.12  # frozen weights counted at 4N / 2N, not 6N
    for s in ("stage 1", "stage 2", "stage 3"):
        assert rows(one)[s]["gpu_hours"] == pytest.approx(2 * rows(two)[s]["gpu_hours"])
    assert any(a["source"] == "measured here" and a["name"] == "MFU, measured" for a in one["assumptions"])
    decode = tmp_path / "decode.json"
    decode.write_text(json.dumps({"reps": [], "ratios": {}}))
    with pytest.raises(SystemExit, match="--label-rtfx"):
        capacity.main([*FIXED, "--from-gpu-bench", str(decode)])


def tiny_sizes() -> dict:
    from llmasr.config import load_config

    return capacity.zipformer_sizes(
        load_config(overrides=[f"zipformer.{k}={json.dumps(v)}" for k, v in TINY_ZIPFORMER.items()]).zipformer
    )


def test_zipformer_flops_counted_on_the_model():
    sizes = tiny_sizes()
    ten, more = capacity.zipformer_flops(sizes, 10.0, 20), capacity.zipformer_flops(sizes, 10.0, 30)
    assert 6e5 < ten["params"] < 7e5  # the demo's 0.67 M model, built from the config
    assert ten["fbank_frames"] == 1000 and 240 <= ten["encoder_frames"] <= 250  # 100 Hz -> 25 Hz
    # each token adds a lattice column: the joiner's output layer at every encoder frame, the decoder
    # projection and the decoder's grouped conv (4 channels per group) once
    J, V, D, ctx, T = 64, 128, 64, 2, ten["encoder_frames"]
    per_token = 2 * T * J * V + 2 * D * J + 2 * D * 4 * ctx
    assert more["forward_flops"] - ten["forward_flops"] == 10 * per_token
    # twice the audio (same tokens): twice the encoder frames and ~twice the FLOPs (attention is quadratic)
    twenty = capacity.zipformer_flops(sizes, 20.0, 20)
    assert twenty["encoder_frames"] == pytest.approx(2 * T, abs=2)
    assert 1.95 < twenty["forward_flops"] / ten["forward_flops"] < 2.15


def test_zipformer_row(tmp_path):
    res = run(tmp_path, "--hours", "10")
    z, info = rows(res)["zipformer"], res["zipformer"]
    tokens = round(12.0 * 3.0 * 2.0)  # mean segment x words/s x BPE pieces/word (assumed under --no-measure)
    assert info["tokens_per_segment"] == tokens
    assert info["count"] == capacity.zipformer_flops(tiny_sizes(), 12.0, tokens)
    fl = 3 * info["count"]["forward_flops"] / 12.0 * 1.05  # forward + backward, padding
    assert z["gflop_per_audio_s"] * 1e9 == pytest.approx(fl)
    seconds = 10 * 0.7 * 3600 * info["epochs"]
    assert z["gpu_hours"] == pytest.approx(fl * seconds / (0.35 * 989e12) / 3600)
    assert z["days"] == pytest.approx(z["gpu_hours"] / (8 * 0.95) / 24)
    assert any(a["name"] == "Zipformer MFU, assumed" and a["source"] == "assumed" for a in res["assumptions"])
    half = run(tmp_path, "--hours", "10", "--mfu-zipformer", "0.175", "--set", "zipformer.epochs=5")
    assert rows(half)["zipformer"]["gpu_hours"] == pytest.approx(2 * 5 / info["epochs"] * z["gpu_hours"])
    assert any(a["name"] == "Zipformer MFU" and a["source"] == "given" for a in half["assumptions"])
    assert rows(half)["stage 1"]["gpu_hours"] == pytest.approx(rows(res)["stage 1"]["gpu_hours"])
    off = run(tmp_path, "--hours", "10", "--set", "zipformer.enabled=false")
    assert "zipformer" not in rows(off) and off["zipformer"] is None
    assert rows(off)["total"]["gpu_hours"] == pytest.approx(rows(res)["total"]["gpu_hours"] - z["gpu_hours"])


def test_every_assumption_has_a_source_and_markdown(tmp_path, capsys):
    res = run(tmp_path)
    assert {a["source"] for a in res["assumptions"]} <= {
        "measured here",
        "published",
        "config",
        "code",
        "given",
        "assumed",
    }
    text = capsys.readouterr().out
    assert "| labelling (faster-whisper) | 190,000 |" in text and "Assumptions:" in text


@pytest.mark.skipif(
    not (capacity.REAL_SPEECH / "manifest.jsonl").is_file(), reason="no ../shared/data/real_speech"
)
def test_flac_measured_on_real_speech():
    m = capacity.measure_flac()
    assert 0.3 * capacity.PCM16_MB_PER_HOUR < m["raw_mb_per_h"] < capacity.PCM16_MB_PER_HOUR
    assert 0.3 * capacity.PCM16_MB_PER_HOUR < m["shard_mb_per_h"] < capacity.PCM16_MB_PER_HOUR
