"""Decoding (tasks/decode.py and its parts): the new-token bound, features, pieces (VAD for long
audio), hypothesis files, and LLM-ASR decoding of tiny stage-2/stage-3 checkpoints (random weights:
the text is garbage, the plumbing is what is tested)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from llmasr.config import EvalConfig, SegmentConfig
from llmasr.model import apply_lora, build_model, log_mel, save_adapter, save_lora
from llmasr.tiny_models import tiny_setup
from tasks import decode, decode_audio
from tasks.checkpoints import stage_dir, write_model_json, write_stage
from tasks.decode import System, max_new_tokens_for, piece_bound
from tasks.demo_corpus import ESPEAK_RATE, speak
from tasks.hyp_files import read_hyp_file
from tasks.llmasr_decode import LLMASRSystem
from tasks.pieces import Piece, plan_pieces
from tasks.testsets import TestUtterance

SENTENCES = [
    "The weather was warm enough to eat lunch outside on the terrace.",
    "The doctor prescribed amoxicillin for the chest infection.",
    "We planted tomatoes and beans in the garden behind the house.",
    "The nurse checked for hypoglycaemia before the evening meal.",
    "The museum opens at nine and closes late on Fridays.",
]


def make_checkpoints(root: Path, work_dir: Path, stages: tuple[int, ...] = (2,)) -> dict[int, Path]:
    """Tiny stage checkpoints as the training stages export them (model.json, adapter/, lora/,
    stage.json)."""
    setup = tiny_setup(root)
    torch.manual_seed(0)
    model = build_model(setup.config)
    out = {}
    for stage in stages:
        folder = stage_dir(work_dir, stage)
        if stage == 3:
            apply_lora(model, setup.config)
            torch.manual_seed(1)
            with torch.no_grad():  # non-zero LoRA B so the adapter changes the output
                for name, p in model.llm.named_parameters():
                    if "lora_B" in name:
                        p.normal_(std=0.02)
            save_lora(model, folder / "lora")
        save_adapter(model.adapter, folder / "adapter")
        write_model_json(folder, setup.config.model_copy(update={"adapter_path": str(folder / "adapter")}))
        write_stage(folder, stage=stage, key=f"test-{stage}", steps=0, samples=0)
        out[stage] = folder
    return out


def espeak_wav(text: str, path: Path, voice: str = "en", lead_s: float = 0.2) -> Path:
    """An espeak-ng utterance at 22.05 kHz (the evaluation resamples it)."""
    audio = speak(text, voice, 160, path.parent)
    sf.write(str(path), np.concatenate([np.zeros(int(lead_s * ESPEAK_RATE), np.float32), audio]), ESPEAK_RATE)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return make_checkpoints(root / "models", root / "work", stages=(2, 3))


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("wavs")
    return [espeak_wav(s, folder / f"u{i}.wav") for i, s in enumerate(SENTENCES[:3])]


# ------------------------------------------------------------------------------ the token bound


def test_max_new_tokens_scales_with_duration_and_is_capped():
    assert max_new_tokens_for(0.0, 8.0, 16, 448) == 16
    assert max_new_tokens_for(1.0, 8.0, 16, 448) == 24
    assert max_new_tokens_for(2.01, 8.0, 16, 448) == 33  # ceil(16.08) + 16
    assert max_new_tokens_for(10.0, 8.0, 16, 448) == 96
    assert max_new_tokens_for(30.0, 8.0, 16, 100) == 100  # capped
    bounds = [max_new_tokens_for(d, 6.0, 8, 10_000) for d in (0.5, 1, 2, 4, 8, 16, 30)]
    assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)
    assert max_new_tokens_for(0.0, 8.0, 0, 448) == 1  # never 0

    s = EvalConfig(tokens_per_second=4.0, min_new_tokens=2, max_new_tokens=20)
    assert [piece_bound(s, d) for d in (0.0, 1.0, 10.0)] == [2, 6, 20]


def test_decoding_settings_defaults_are_the_papers():
    from llmasr.config import load_config

    s = load_config().eval
    assert (s.num_beams, s.no_repeat_ngram_size) == (8, 6)
    assert load_config(overrides=["eval.num_beams=1"]).eval.num_beams == 1


# --------------------------------------------------------------------------- audio and features


def test_log_mel_is_whisper_features_of_the_real_length():
    audio = (0.1 * np.random.default_rng(0).standard_normal(16000 * 3 + 50)).astype(np.float32)
    feats = log_mel(audio, 80)
    assert feats.shape == (80, 300)  # 100 frames per second, no padding to 30 s
    assert log_mel(audio, 128).shape == (128, 300)
    assert log_mel(audio, 80, max_frames=200).shape == (80, 200)
    x, lengths = decode_audio.pad_features([feats, feats[:, :120]])
    assert x.shape == (2, 80, 300) and lengths.tolist() == [300, 120]
    assert np.all(x[1, :, 120:] == 0) and np.allclose(x[1, :, :120], feats[:, :120])
    # the numbers of transformers' WhisperFeatureExtractor, which the checkpoints were trained on
    from transformers import WhisperFeatureExtractor

    ref = WhisperFeatureExtractor(feature_size=80)(
        audio, sampling_rate=16000, padding="longest", return_tensors="np"
    )["input_features"][0]
    assert ref.shape == feats.shape and np.abs(ref - feats).max() < 1e-5


def test_log_mel_of_a_piece_shorter_than_half_a_window():
    audio = np.full(170, 0.01, dtype=np.float32)  # 10.6 ms: one 10 ms frame, shorter than the STFT's padding
    assert log_mel(audio, 80).shape == (80, 1)
    assert log_mel(audio[:100], 80).shape == (80, 0)


def test_read_audio_resamples_and_cuts(tmp_path):
    t = np.arange(int(2.0 * 22050)) / 22050
    sf.write(str(tmp_path / "a.wav"), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 22050)
    whole = decode_audio.read_audio(tmp_path / "a.wav")
    assert whole.dtype == np.float32 and abs(len(whole) - 32000) <= 2
    part = decode_audio.read_audio(tmp_path / "a.wav", 0.5, 1.25)
    assert abs(len(part) - 12000) <= 2
    stereo = np.stack([np.ones(16000, np.float32) * 0.2, np.zeros(16000, np.float32)], axis=1)
    sf.write(str(tmp_path / "s.flac"), stereo, 16000)
    mono = decode_audio.read_audio(tmp_path / "s.flac", 0.25, 0.5)
    assert mono.shape == (4000,) and np.allclose(mono, 0.1, atol=1e-3)
    assert decode_audio.audio_duration(tmp_path / "a.wav") == pytest.approx(2.0)


def test_plan_pieces_cuts_long_audio_by_vad_and_keeps_times(tmp_path, wavs):
    # 36 s: the three sentences with long pauses, repeated
    parts = []
    for _ in range(4):
        for w in wavs:
            parts += [decode_audio.read_audio(w), np.zeros(int(1.5 * 16000), np.float32)]
    long_audio = np.concatenate(parts)
    assert len(long_audio) / 16000 > 30
    sf.write(str(tmp_path / "long.wav"), long_audio, 16000)
    utts = [
        TestUtterance("long", str(tmp_path / "long.wav"), "x"),
        TestUtterance("timed", str(tmp_path / "long.wav"), "y", start_s=2.0, end_s=6.5),
        TestUtterance("broken", str(tmp_path / "broken.wav"), "z"),
    ]
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    problems: list[str] = []
    seg = SegmentConfig(max_segment_s=12.0, target_segment_s=8.0)
    kept, pieces, durations = plan_pieces(utts, 30.0, seg, problems)
    assert [u.utt_id for u in kept] == ["long", "timed"]
    assert len(problems) == 1 and "broken" in problems[0] and "not readable" in problems[0]
    long_pieces = [p for p in pieces if p.utt_id == "long"]
    assert len(long_pieces) >= 3
    assert all(p.duration_s < 12.0 for p in long_pieces)
    assert [p.index for p in long_pieces] == list(range(len(long_pieces)))
    assert all(a.end_s <= b.start_s for a, b in zip(long_pieces, long_pieces[1:]))
    assert [(p.start_s, p.end_s) for p in pieces if p.utt_id == "timed"] == [(2.0, 6.5)]
    assert durations["timed"] == pytest.approx(4.5) and durations["long"] == pytest.approx(
        len(long_audio) / 16000
    )


# ------------------------------------------------------------------------------ hypothesis files


def test_read_hyp_file_formats(tmp_path):
    (tmp_path / "h.jsonl").write_text(
        json.dumps({"utt_id": "a", "text": "hello  world"})
        + "\n"
        + json.dumps({"id": "b", "hyp": ["x", "y"]})
        + "\nnot json\n"
    )
    problems: list[str] = []
    assert read_hyp_file(tmp_path / "h.jsonl", problems) == {"a": "hello world", "b": "x y"}
    assert len(problems) == 1 and "not valid JSON" in problems[0]

    (tmp_path / "h.tsv").write_text("utt_id\ttext\na\thello world\nb\t\na\tagain\n")
    problems = []
    assert read_hyp_file(tmp_path / "h.tsv", problems) == {"a": "hello world", "b": ""}
    assert "duplicate id 'a'" in problems[0]

    (tmp_path / "recogs-test.txt").write_text(
        "a:\tref=['HELLO', 'WORLD']\na:\thyp=['HELLO', 'WORD']\nsp1-b:\tref=['X']\nsp1-b:\thyp=[]\n"
    )
    assert read_hyp_file(tmp_path / "recogs-test.txt") == {"a": "HELLO WORD", "sp1-b": ""}

    (tmp_path / "text").write_text("a hello there\nb\n")
    assert read_hyp_file(tmp_path / "text") == {"a": "hello there", "b": ""}


def test_the_decode_cache_key_covers_every_audio_systems_code():
    """A logic change in any module that decodes re-decodes: each audio system's class, its audio
    reading and its pieces live in a module of ``decode.DECODE_CODE`` (the decode key's code part)."""
    for module in ("tasks.faster_whisper_decode", "tasks.whisper_hf", "tasks.zipformer_decode"):
        importlib.import_module(module)  # its System subclass defined
    kinds = [c for c in System.__subclasses__() if c.__module__.startswith("tasks.") and c.needs_audio]
    assert {c.__name__ for c in kinds} >= {
        "LLMASRSystem",
        "FasterWhisperSystem",
        "TransformersWhisperSystem",
        "ZipformerSystem",
    }
    for module in [c.__module__ for c in kinds] + [decode_audio.__name__, Piece.__module__, decode.__name__]:
        assert module in decode.DECODE_CODE, module


# ------------------------------------------------------------------------------- running systems


class Flaky(System):
    """Echoes the piece length; raises on pieces of one length (and on any batch holding one)."""

    def __init__(self, bad_len: int) -> None:
        super().__init__("flaky")
        self.bad_len = bad_len
        self.calls: list[int] = []

    def decode(self, audios):
        self.calls.append(len(audios))
        if any(len(a) == self.bad_len for a in audios):
            raise RuntimeError("boom")
        return [f"n{len(a)}" for a in audios]


def test_run_system_isolates_a_failing_piece(tmp_path):
    for name, secs in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        sf.write(str(tmp_path / f"{name}.wav"), np.zeros(int(secs * 16000), np.float32), 16000)
    utts = [TestUtterance(n, str(tmp_path / f"{n}.wav"), "t") for n in "abc"]
    pieces = [Piece(n, 0, str(tmp_path / f"{n}.wav"), 0.0, s) for n, s in (("a", 1.0), ("b", 2.0))]
    pieces += [
        Piece("c", 0, str(tmp_path / "c.wav"), 0.0, 1.0),
        Piece("c", 1, str(tmp_path / "c.wav"), 1.5, 3.0),
    ]
    durations = {"a": 1.0, "b": 2.0, "c": 3.0}
    system = Flaky(bad_len=32000)  # "b"
    result = decode.run_system(system, utts, pieces, durations, EvalConfig(batch_size=8))
    assert result.hyps == {"a": "n16000", "c": "n16000 n24000"}  # pieces joined in time order
    assert list(result.failures) == ["b"] and "boom" in result.failures["b"]
    assert system.calls[0] == 4 and sorted(system.calls[1:]) == [1, 1, 1, 1]  # the batch, then one by one
    assert result.audio_s == 6.0 and result.decode_s is not None and result.rtf is not None


def test_hyp_file_system_reports_a_missing_id(tmp_path):
    (tmp_path / "h.tsv").write_text("a\thello\n")
    system = decode.make_system("hyps", "ext", str(tmp_path / "h.tsv"), EvalConfig())
    utts = [TestUtterance("a", "x.wav", "hello"), TestUtterance("b", "y.wav", "bye")]
    result = decode.run_system(system, utts, [], {"a": 1.0, "b": 1.0}, EvalConfig())
    assert result.hyps == {"a": "hello"} and "no hypothesis for 'b'" in result.failures["b"]
    assert result.rtf is None


# ----------------------------------------------------------------------------------- LLM-ASR


def test_llmasr_beam8_decodes_every_utterance_within_its_bound(checkpoints, wavs):
    settings = EvalConfig(
        num_beams=8,
        no_repeat_ngram_size=6,
        batch_size=2,
        tokens_per_second=3.0,
        min_new_tokens=4,
        device="cpu",
    )
    utts = [TestUtterance(f"u{i}", str(w), SENTENCES[i]) for i, w in enumerate(wavs)]
    kept, pieces, durations = plan_pieces(utts, 30.0, SegmentConfig(), [])
    system = LLMASRSystem("llmasr-stage2", checkpoints[2], settings)
    result = decode.run_system(system, kept, pieces, durations, settings)
    assert not result.failures
    assert set(result.hyps) == {"u0", "u1", "u2"} and all(isinstance(h, str) for h in result.hyps.values())
    assert 0 < result.tokens <= sum(piece_bound(settings, p.duration_s) for p in pieces)
    assert result.rtf > 0 and result.tokens_per_s > 0

    # the per-piece bound holds inside a batch run to the longest piece's bound
    audios = [decode_audio.read_audio(w) for w in wavs[:2]]
    short = audios[1][: 16000 // 2]  # 0.5 s -> bound ceil(1.5) + 4 = 6 tokens
    system.tokens = 0
    texts = system.decode([audios[0], short])
    assert len(texts) == 2
    ids = system.model.tokenizer(texts[1], add_special_tokens=False)["input_ids"]
    assert len(ids) <= piece_bound(settings, 0.5) + 2  # re-tokenising may merge or split a little
    system.close()


def test_llmasr_stage3_lora_greedy_merged_in_memory_equals_attached(checkpoints, wavs):
    """eval.merge_lora (default) folds the adapters into the weights at load: same greedy hypotheses
    as decoding with them attached, the checkpoint untouched, and a different decode cache key."""
    from llmasr.model import has_lora

    settings = EvalConfig(
        num_beams=1,
        no_repeat_ngram_size=0,
        batch_size=4,
        tokens_per_second=2.0,
        min_new_tokens=4,
        device="cpu",
    )
    audios = [decode_audio.read_audio(w) for w in wavs]
    before = torch.backends.cuda.cudnn_sdp_enabled()
    merged = LLMASRSystem("llmasr-stage3", checkpoints[3], settings)
    merged.load()
    assert not has_lora(merged.model)  # plain LLM weights now
    assert torch.backends.cuda.cudnn_sdp_enabled() is False  # eval.cudnn_attention default, set at load
    attached = LLMASRSystem(
        "llmasr-stage3",
        checkpoints[3],
        settings.model_copy(update={"merge_lora": False, "cudnn_attention": True}),
    )
    attached.load()
    assert has_lora(attached.model)
    assert torch.backends.cuda.cudnn_sdp_enabled() is True
    torch.backends.cuda.enable_cudnn_sdp(before)
    texts = merged.decode(audios)
    assert len(texts) == 3 and texts == attached.decode(audios)
    assert merged.tokens == attached.tokens > 0
    assert (Path(checkpoints[3]) / "lora" / "adapter_config.json").is_file()  # nothing written back
    assert merged.identity()["stage"]["stage"] == 3
    assert merged.identity() != attached.identity()


def test_a_stage_is_the_same_system_wherever_its_files_lie(checkpoints, tmp_path):
    """The decode cache key of an LLM-ASR stage follows what was trained (stage.json) and its exports'
    files, not the folder: a hard-linked copy (an ablation adopting the run's stage) reuses the
    run's decodes; a rewritten export, or a retrained stage, is another system."""
    import os
    import shutil

    settings = EvalConfig(num_beams=1, device="cpu")
    run = LLMASRSystem("llmasr-stage3", checkpoints[3], settings)
    store = Path(shutil.copytree(checkpoints[3], tmp_path / "store" / "stage3-abc", copy_function=os.link))
    adopted = LLMASRSystem("llmasr-stage3", store, settings)
    assert adopted.identity() == run.identity()
    assert run.identity()["exports"]["lora"]  # the exports' files are in the key
    weights = next((store / "lora").glob("*.safetensors"))
    data = weights.read_bytes()
    weights.unlink()  # a new file, not written through the link into the run's folder
    weights.write_bytes(data)
    assert adopted.identity() != run.identity()
    stage_json = store / "stage.json"
    info = json.loads(stage_json.read_text())
    stage_json.unlink()
    stage_json.write_text(json.dumps({**info, "time_s": 1.0}))
    assert LLMASRSystem("x", store, settings).identity()["stage"]["time_s"] == 1.0


def old_layout(stage: Path, into: Path) -> Path:
    """A copy of stage folder ``stage`` as versions before the adapter's rename wrote it: the adapter in
    ``projector/`` (``projector.safetensors`` + ``projector.json``), and a model.json naming it
    ``projector_path`` with the settings ``projector`` / ``projector_hidden``."""
    import shutil

    old = shutil.copytree(stage, into)
    (old / "adapter").rename(old / "projector")
    (old / "projector" / "adapter.json").rename(old / "projector" / "projector.json")
    (old / "projector" / "adapter.safetensors").rename(old / "projector" / "projector.safetensors")
    model = json.loads((old / "model.json").read_text())
    model = {
        {"adapter": "projector", "adapter_hidden": "projector_hidden"}.get(k, k): v for k, v in model.items()
    }
    del model["adapter_path"]
    model["projector_path"] = str(old / "projector")
    (old / "model.json").write_text(json.dumps(model))
    return old


def test_a_checkpoint_of_the_projector_layout_loads_and_decodes_the_same(checkpoints, wavs, tmp_path):
    """A stage 2 or 3 exported before the adapter's rename (projector/, projector.json, projector_path
    in model.json) still loads and decodes: the same weights and hypotheses as the new layout."""
    from tasks.checkpoints import adapter_folder, load_llmasr

    settings = EvalConfig(
        num_beams=1, no_repeat_ngram_size=0, tokens_per_second=2.0, min_new_tokens=3, device="cpu"
    )
    audios = [decode_audio.read_audio(w) for w in wavs[:2]]
    for stage in (2, 3):
        old = old_layout(checkpoints[stage], tmp_path / f"stage{stage}")
        assert not (old / "adapter").exists() and adapter_folder(old) == old / "projector"
        assert adapter_folder(checkpoints[stage]) == checkpoints[stage] / "adapter"
        new_model, old_model = load_llmasr(checkpoints[stage]), load_llmasr(old)
        for (name, a), (_, b) in zip(new_model.state_dict().items(), old_model.state_dict().items()):
            assert torch.equal(a, b), name
        texts = LLMASRSystem("new", checkpoints[stage], settings).decode(audios)
        assert LLMASRSystem("old", old, settings).decode(audios) == texts


# ------------------------------------------------------------- explicit settings, per-row bounds


@pytest.mark.parametrize("beams", [1, 4], ids=["greedy", "beam4"])
def test_llmasr_piece_decodes_the_same_alone_and_in_a_batch(checkpoints, wavs, beams):
    """Each row stops at its own bound and end token (llmasr.generation.RowBound): the short piece,
    with the smallest bound, gets the same hypothesis alone as beside longer pieces."""
    settings = EvalConfig(
        num_beams=beams,
        no_repeat_ngram_size=3,
        batch_size=3,
        tokens_per_second=2.0,
        min_new_tokens=3,
        device="cpu",
    )
    audios = [decode_audio.read_audio(w) for w in wavs]
    audios[2] = audios[2][: 16000 * 3 // 4]  # 0.75 s: bound ceil(1.5) + 3 = 5 tokens
    system = LLMASRSystem("llmasr-stage2", checkpoints[2], settings)
    batch = system.decode(audios)
    alone = [system.decode([a])[0] for a in audios]
    assert batch == alone
    assert piece_bound(settings, 0.75) < piece_bound(settings, len(audios[0]) / 16000)
    system.close()


def test_llmasr_ignores_the_llms_generation_config(tmp_path, wavs):
    """An LLM checkpoint whose generation_config.json asks for sampling, a repetition penalty and
    top-p decodes to the same hypotheses as the same checkpoint without that file."""
    from transformers import AutoModelForCausalLM

    checkpoints = make_checkpoints(tmp_path / "models", tmp_path / "work", stages=(2,))
    llm = tmp_path / "models" / "llm"
    (llm / "generation_config.json").unlink(missing_ok=True)
    audios = [decode_audio.read_audio(w) for w in wavs]
    want = {}
    for beams in (1, 3):
        settings = EvalConfig(
            num_beams=beams,
            no_repeat_ngram_size=3,
            batch_size=3,
            tokens_per_second=3.0,
            min_new_tokens=4,
            device="cpu",
        )
        want[beams] = LLMASRSystem("plain", checkpoints[2], settings).decode(audios)
    (llm / "generation_config.json").write_text(
        json.dumps(
            {
                "do_sample": True,
                "temperature": 0.7,
                "top_p": 0.8,
                "top_k": 20,
                "repetition_penalty": 1.3,
                "no_repeat_ngram_size": 1,
                "length_penalty": 2.0,
                "num_beams": 5,
                "max_new_tokens": 2,
                "bad_words_ids": [[5], [6]],
                "min_new_tokens": 3,
            }
        )
    )
    # it is read
    assert AutoModelForCausalLM.from_pretrained(str(llm)).generation_config.repetition_penalty == 1.3
    for beams in (1, 3):
        settings = EvalConfig(
            num_beams=beams,
            no_repeat_ngram_size=3,
            batch_size=3,
            tokens_per_second=3.0,
            min_new_tokens=4,
            device="cpu",
        )
        system = LLMASRSystem("with-file", checkpoints[2], settings)
        assert system.decode(audios) == want[beams]
        assert system.model.llm.generation_config.do_sample is True  # restored after each call
