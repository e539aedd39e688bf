"""Whisper through transformers as an evaluation system (tasks/whisper_hf.py): the ``transformers:``
baselines and the stage-1 model, decoded with an explicit configuration, each piece to its own bound."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from llmasr.config import EvalConfig, SegmentConfig
from llmasr.tiny_models import shipped_tokenizer_file, tiny_whisper, whisper_tokenizer
from tasks import decode
from tasks import evaluate as ev
from tasks.decode import piece_bound
from tasks.faster_whisper_decode import FASTER_WHISPER_OPTIONS, FasterWhisperSystem
from tasks.pieces import plan_pieces
from tasks.whisper_hf import TransformersWhisperSystem, suppress_tokens

REAL_SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_speech" / "manifest.jsonl"


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory) -> Path:
    return tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny")


@pytest.fixture(scope="module")
def audios() -> list[np.ndarray]:
    """Three pieces of different lengths (4, 2.5, 1 s): the last has the smallest bound."""
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in (4.0, 2.5, 1.0)]


def settings(**kw) -> EvalConfig:
    base = dict(num_beams=1, no_repeat_ngram_size=3, device="cpu", tokens_per_second=3.0, min_new_tokens=4)
    return EvalConfig(**{**base, **kw})


def test_suppress_tokens_are_whispers_rule_as_faster_whisper_builds_it():
    """OpenAI's suppress_tokens="-1" and suppress_blank, computed from the tokenizer: the same ids
    faster-whisper suppresses, and (when the bundled models are prepared) the ids OpenAI's
    checkpoints carry in their generation_config.json."""
    import tokenizers
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_suppressed_tokens

    ours, begin = suppress_tokens(whisper_tokenizer())
    fw = Tokenizer(
        tokenizers.Tokenizer.from_file(str(shipped_tokenizer_file())),
        multilingual=False,
        task="transcribe",
        language="en",
    )
    assert ours == list(get_suppressed_tokens(fw, [-1]))  # 90 ids for the English-only vocabulary
    assert begin == [220, fw.eot]  # " " and <|endoftext|>
    from transformers import AutoTokenizer

    from llmasr.bundled import resolve_hf

    folder = Path(resolve_hf("bundled:whisper-base"))  # scripts/setup.sh installs its packages: no skip

    shipped = json.loads((folder / "generation_config.json").read_text())
    ours, begin = suppress_tokens(AutoTokenizer.from_pretrained(str(folder)))
    assert (ours, begin) == (sorted(shipped["suppress_tokens"]), shipped["begin_suppress_tokens"])


@pytest.mark.parametrize("trim", [False, True], ids=["padded-30s", "trimmed"])
@pytest.mark.parametrize("beams", [1, 3], ids=["greedy", "beam3"])
def test_a_piece_decodes_the_same_alone_and_in_a_batch(whisper_dir, audios, trim, beams):
    """Each row stops at its own bound and end token, and (trimmed) cross-attends to its own frames:
    the short piece's hypothesis does not depend on the longer pieces beside it."""
    system = TransformersWhisperSystem(
        "t", str(whisper_dir), settings(num_beams=beams, whisper_trim_padding=trim)
    )
    batch = system.decode(audios)
    alone = [system.decode([a])[0] for a in audios]
    assert batch == alone and all(batch)
    bounds = system.bounds(audios)
    assert bounds[2] < bounds[0]  # the short piece really has the smaller bound
    tok = system.tokenizer
    # re-tokenising may split a little
    assert len(tok(alone[2], add_special_tokens=False)["input_ids"]) <= bounds[2] + 2


def test_the_checkpoints_generation_config_is_not_inherited(whisper_dir, audios, tmp_path):
    """A generation_config.json asking for sampling, a repetition penalty, other forced ids and no
    suppression changes nothing: the hypotheses equal those of the same weights without it."""
    clean = tmp_path / "clean"
    shutil.copytree(whisper_dir, clean)
    (clean / "generation_config.json").unlink(missing_ok=True)
    noisy = tmp_path / "noisy"
    shutil.copytree(whisper_dir, noisy)
    (noisy / "generation_config.json").write_text(
        json.dumps(
            {
                "do_sample": True,
                "temperature": 0.7,
                "top_p": 0.5,
                "top_k": 3,
                "repetition_penalty": 1.5,
                "no_repeat_ngram_size": 1,
                "length_penalty": 3.0,
                "num_beams": 5,
                "max_length": 5,
                "suppress_tokens": [],
                "begin_suppress_tokens": [],
                "forced_decoder_ids": [[1, 50259]],
                "decoder_start_token_id": 50257,
                "eos_token_id": 50257,
                "pad_token_id": 50257,
                "bos_token_id": 50257,
            }
        )
    )
    from transformers import WhisperForConditionalGeneration

    # it is read
    assert WhisperForConditionalGeneration.from_pretrained(str(noisy)).generation_config.do_sample is True
    for beams in (1, 2):
        s = settings(num_beams=beams)
        want = TransformersWhisperSystem("clean", str(clean), s).decode(audios)
        assert TransformersWhisperSystem("noisy", str(noisy), s).decode(audios) == want


def _stage1_checkpoint(work: Path, whisper_dir: Path, trim_padding: bool = True) -> Path:
    """checkpoints/stage1 as the trainer exports it: whisper/ (Whisper + tokenizer), model.json,
    stage.json."""
    from tasks.checkpoints import stage_dir, write_stage

    folder = stage_dir(work, 1)
    shutil.copytree(whisper_dir, folder / "whisper")
    (folder / "model.json").write_text(
        json.dumps({"encoder": str(folder / "encoder"), "trim_padding": trim_padding})
    )
    write_stage(folder, stage=1, key="test-1", steps=0, samples=0)
    return folder


def test_stage1_and_transformers_baselines_are_systems(whisper_dir, tmp_path):
    work = tmp_path / "work"
    stage1 = _stage1_checkpoint(work, whisper_dir)
    cfg = EvalConfig(
        stages=[1, 2], baselines=[f"transformers:{whisper_dir}", "faster-whisper:bundled:tiny.en"]
    )
    specs, notes = ev.system_specs(work, cfg)
    assert [(s.name, s.kind) for s in specs] == [
        ("llmasr-stage1", "transformers"),
        (f"transformers:{whisper_dir}", "transformers"),
        ("faster-whisper:bundled:tiny.en", "faster-whisper"),
    ]
    assert notes and "llmasr-stage2: no complete checkpoint" in notes[0]
    s = settings()
    stage, stock = ev.make_systems(specs[:2], s)
    # as stage 1 trained / as Whisper was trained
    assert stage.trim_padding is True and stock.trim_padding is False
    assert stage.identity()["stage"]["stage"] == 1 and stage.identity() != stock.identity()
    forced = TransformersWhisperSystem("llmasr-stage1", str(stage1), settings(whisper_trim_padding=False))
    # eval.whisper_trim_padding is in the key
    assert forced.trim_padding is False and forced.identity() != stage.identity()
    # the same stage hard-linked elsewhere (an ablation adopting the run's stage 1) is the same system
    import os

    linked = shutil.copytree(stage1, tmp_path / "store" / "stage1-abc", copy_function=os.link)
    assert TransformersWhisperSystem("llmasr-stage1", str(linked), s).identity() == stage.identity()
    # decoded through the same run_system as every other system
    wav = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(str(wav), (0.1 * np.random.default_rng(1).standard_normal(24000)).astype(np.float32), 16000)
    from tasks.testsets import TestUtterance

    kept, pieces, durations = plan_pieces([TestUtterance("a", str(wav), "hello")], 30.0, SegmentConfig(), [])
    result = decode.run_system(stage, kept, pieces, durations, s)
    assert not result.failures and result.hyps["a"] and 0 < result.tokens <= piece_bound(s, 1.5)
    # a rewritten model folder is another system as far as the decode cache goes (rewritten in a
    # copy: whisper_dir is shared by the module's tests)
    own = Path(shutil.copytree(whisper_dir, tmp_path / "stock"))
    copy = TransformersWhisperSystem("stock", f"transformers:{own}", s)
    before = copy.identity()
    (own / "config.json").write_text((own / "config.json").read_text() + "\n")
    assert copy.identity() != before


def test_faster_whisper_identity_follows_the_resolved_model_folder(tmp_path, monkeypatch):
    """The decode cache key of faster-whisper:bundled:<name> names the folder it resolves to (its
    package versions) and that folder's files: an upgrade or a rewritten file is another system."""
    import llmasr.bundled

    a, b = tmp_path / "whisper-base-ct2--pkg-1.0.0--v1", tmp_path / "whisper-base-ct2--pkg-1.0.1--v1"
    for d in (a, b):
        d.mkdir()
        (d / "config.json").write_text("{}")
    folder = {"now": a}
    monkeypatch.setattr(llmasr.bundled, "resolve_ct2", lambda spec, search_path=None: str(folder["now"]))
    system = FasterWhisperSystem("fw", "faster-whisper:bundled:whisper-base", settings())
    first = system.identity()
    assert first["source"] == str(a) and [f[0] for f in first["files"]] == ["config.json"]
    folder["now"] = b
    assert system.identity() != first
    folder["now"] = a
    (a / "config.json").write_text('{"changed": true}')
    assert system.identity() != first


def test_eval_config_takes_transformers_baselines_and_stage_1():
    from pydantic import ValidationError

    cfg = EvalConfig(
        baselines=["transformers:bundled:whisper-base", "transformers:openai/whisper-base"], stages=[1, 2, 3]
    )
    assert cfg.stages == [1, 2, 3] and EvalConfig().stages == [1, 2, 3]
    for bad in (["whisper:large"], ["transformers:"], ["transformers: "]):
        with pytest.raises(ValidationError, match="transformers:<Whisper checkpoint>"):
            EvalConfig(baselines=bad)
    with pytest.raises(ValidationError, match="stage checkpoints are 1"):
        EvalConfig(stages=[4])


def test_faster_whisper_gets_every_decoding_option():
    """Nothing left to faster-whisper's defaults: every transcribe parameter that shapes the tokens
    is passed (the four from EvalConfig + FASTER_WHISPER_OPTIONS)."""
    from faster_whisper import WhisperModel

    params = set(inspect.signature(WhisperModel.transcribe).parameters)
    given = {
        "language",
        "beam_size",
        "no_repeat_ngram_size",
        "max_new_tokens",
        *FASTER_WHISPER_OPTIONS,
    }
    assert given <= params
    # input, a log switch, VAD (off)
    assert params - given == {"self", "audio", "log_progress", "vad_parameters"}
    o = FASTER_WHISPER_OPTIONS
    assert (o["temperature"], o["repetition_penalty"], o["length_penalty"], o["no_speech_threshold"]) == (
        0.0,
        1.0,
        1.0,
        None,
    )


def test_converted_whisper_base_agrees_with_faster_whisper_on_real_speech():
    """The fidelity check on real weights: transformers:bundled:whisper-base and faster-whisper's
    base, greedy, on the three shortest real clips: the same normalised words."""
    from llmasr.bundled import resolve_ct2, resolve_hf

    # scripts/setup.sh installs them: no skip
    resolve_hf("bundled:whisper-base"), resolve_ct2("bundled:whisper-base")
    if not REAL_SPEECH.is_file():
        pytest.skip(f"no real speech at {REAL_SPEECH}")
    from llmasr.text import normalize
    from tasks.testsets import load_test_set

    utts, _ = load_test_set(REAL_SPEECH)
    kept, pieces, durations = plan_pieces(utts, 30.0, SegmentConfig(), [])
    short = sorted(kept, key=lambda u: durations[u.utt_id])[:3]
    pieces = [p for p in pieces if p.utt_id in {u.utt_id for u in short}]
    s = EvalConfig(num_beams=1, device="cpu", batch_size=3)
    hyps = {}
    for kind in ("transformers", "faster-whisper"):
        system = decode.make_system(kind, kind, "bundled:whisper-base", s)
        hyps[kind] = decode.run_system(system, short, pieces, durations, s).hyps
        system.close()
    for u in short:
        assert normalize(hyps["transformers"][u.utt_id]) == normalize(hyps["faster-whisper"][u.utt_id]), (
            u.utt_id
        )
        # it transcribes
        assert normalize(hyps["transformers"][u.utt_id]).split()[:2] == normalize(u.text).split()[:2]


def test_stage1_export_is_a_complete_whisper_folder(whisper_dir, tmp_path):
    """The stage-1 export gets a tokenizer and a preprocessor_config.json even where its source has
    none to copy (tasks.export.complete_whisper_folder): a Whisper loader takes the folder whole."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from tasks.export import complete_whisper_folder

    out = tmp_path / "whisper"
    # weights only
    WhisperForConditionalGeneration.from_pretrained(str(whisper_dir)).save_pretrained(str(out))
    assert not (out / "tokenizer.json").exists() and not (whisper_dir / "preprocessor_config.json").exists()
    complete_whisper_folder(str(whisper_dir), out, 80)
    assert WhisperFeatureExtractor.from_pretrained(str(out)).feature_size == 80
    system = TransformersWhisperSystem("s", str(out), settings())
    reference = TransformersWhisperSystem("r", str(whisper_dir), settings())
    audio = (0.1 * np.random.default_rng(2).standard_normal(16000)).astype(np.float32)
    hyp = system.decode([audio])[0]
    assert isinstance(hyp, str) and hyp == reference.decode([audio])[0]  # the same weights: the same words
