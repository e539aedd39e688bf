"""tasks.train_data: shards -> length-bucketed, padded log-mel batches, split over ranks and workers.

Shards are real: espeak-ng sentences (16 kHz FLAC) written by tasks.shard.write_shards from
hand-built records.  ``make_shards`` is also used by tests/test_train.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds

from llmasr.audio import convert_to_flac16k
from llmasr.config import ShardConfig
from llmasr.layout import WorkLayout
from llmasr.model import HOP_LENGTH, N_FFT, LogMel, mel_filters
from llmasr.records import STATUS_OK, Decision, Item, Label, Segment
from tasks.shard import write_shards
from tasks.train_data import (
    LLMTargets,
    ShardSpeechDataset,
    WhisperTargets,
    assign,
    collate,
    estimate_batches,
    flac_frames,
    make_loader,
    pad_features,
    read_split,
    synced,
    whisper_label_tokenizer,
)

SR = 16_000
SENTENCES = [
    "The weather was warm enough to eat lunch outside.",
    "She packed her bags the night before the train.",
    "Our team finished the report two days early.",
    "The old bridge was repaired last summer.",
    "He learned to play the guitar every evening.",
    "The museum opens at nine on Fridays.",
    "We planted tomatoes in the garden.",
    "The library added a quiet room.",
    "Fresh bread sells out by noon.",
    "The children built a small boat.",
    "My neighbour repairs bicycles.",
    "The concert was moved indoors.",
    "A good map makes a hike easier.",
    "The council voted to extend the bus line.",
]
VALIDATION_SENTENCES = [
    "The kitchen smelled of cinnamon.",
    "Please switch off the lights.",
    "The match ended in a draw.",
    "Our cat sleeps on the windowsill.",
]


def _speak(text: str, dst: Path, speed: int = 175) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(
            ["espeak-ng", "-v", "en-us", "-s", str(speed), "-w", str(wav), text],
            check=True,
            capture_output=True,
        )
        return convert_to_flac16k(wav, dst)


def make_shards(
    root: Path,
    splits: dict[str, list[str]],
    per_shard: int = 3,
    extra_audio: dict[str, tuple[np.ndarray, str]] | None = None,
    speed: int = 175,
) -> Path:
    """espeak-ng utterances (one item = one segment each) sharded by tasks.shard; returns index.json.

    ``extra_audio``: item_id -> (float samples at 16 kHz, text), put in the train split.
    """
    layout = WorkLayout(root)
    items, segments, labels, decisions = [], [], [], []

    def add(item_id: str, text: str, split: str, duration: float, path: Path) -> None:
        items.append(Item(item_id, "/test", None, layout.rel(path), duration, None, STATUS_OK))
        sid = f"{item_id}-000000000"
        segments.append(Segment(sid, item_id, 0.0, duration, duration, text, "captions"))
        labels.append(Label(sid, text, -0.2, 0.01, 1.3, "en", 0.99, "test"))
        decisions.append(Decision(sid, item_id, True, [], 0.0, len(text.split()), 1.0, duration, split))

    for split, sentences in splits.items():
        for i, text in enumerate(sentences):
            item_id = f"{split[:3]}{i:03d}"
            path = layout.audio(item_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            add(item_id, text, split, _speak(text, path, speed), path)
    for item_id, (audio, text) in (extra_audio or {}).items():
        path = layout.audio(item_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), audio.astype(np.float32), SR, format="FLAC", subtype="PCM_16")
        add(item_id, text, "train", len(audio) / SR, path)
    write_shards(
        layout,
        items,
        segments,
        labels,
        decisions,
        ShardConfig(target_mb=64, max_samples=per_shard, validation_fraction=0.0),
    )
    return layout.shard_index


def shard_samples(index: Path, split: str) -> dict[str, dict]:
    """key -> {"text", "n"} read back with webdataset."""
    out = {}
    for url in read_split(index, split).urls:
        for s in wds.WebDataset([url], shardshuffle=False):
            audio, _ = sf.read(io.BytesIO(s["flac"]), dtype="float32")
            out[s["__key__"]] = {"text": json.loads(s["json"])["text"], "n": len(audio), "audio": audio}
    return out


ODD_N = SR + 7 * HOP_LENGTH + 37  # 107 frames: odd


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    odd = (0.1 * rng.standard_normal(ODD_N), "noise with an odd number of frames")
    return make_shards(
        tmp_path_factory.mktemp("shards") / "work",
        {"train": SENTENCES, "validation": VALIDATION_SENTENCES},
        per_shard=3,
        extra_audio={"oddframes": odd},
    )


@pytest.fixture(scope="module")
def samples(index) -> dict[str, dict]:
    return shard_samples(index, "train")


@pytest.fixture(scope="module")
def llm_tokenizer(tmp_path_factory):
    from llmasr.model import build_tokenizer
    from llmasr.tiny_models import tiny_tokenizer

    return build_tokenizer(tiny_tokenizer(tmp_path_factory.mktemp("tok")))


# ------------------------------------------------------------------------------------ batches


def test_batches_respect_audio_and_size_limits(index, samples):
    ds = ShardSpeechDataset(index, "train", batch_max_audio_s=7.0, max_batch_size=3, bucket_size=8, seed=1)
    batches = list(ds)
    assert sum(len(b["keys"]) for b in batches) == len(samples)
    durations = {k: v["n"] / SR for k, v in samples.items()}
    assert max(durations.values()) < 7.0  # every sample fits a batch on its own
    for b in batches:
        keys = b["keys"]
        assert 1 <= len(keys) <= 3
        assert len(keys) * max(durations[k] for k in keys) <= 7.0  # padded audio within budget
        assert b["audio_s"] == pytest.approx(sum(durations[k] for k in keys))
        assert b["input_features"].shape == (len(keys), 80, int(b["feature_lengths"].max()))
    sizes = Counter(len(b["keys"]) for b in batches)
    assert sizes[3] + sizes[2] > 0  # batching happens, not one sample per batch


def test_length_buckets_keep_padding_small(index, samples):
    ds = ShardSpeechDataset(index, "train", batch_max_audio_s=30.0, max_batch_size=4, bucket_size=64)
    for b in ds:
        lens = b["feature_lengths"].float()
        assert float(lens.min() / lens.max()) > 0.5  # sorted buckets: similar lengths together


def test_every_sample_once_per_epoch_over_2_ranks_x_2_workers(index, samples):
    info = read_split(index, "train")
    assert info.shards % 2 == 1  # 5 shards: one left over after dealing 2 to each rank
    seen: list[str] = []
    per_rank, per_reader, batches = [], {}, []
    for rank in range(2):
        ds = ShardSpeechDataset(
            index, "train", rank=rank, world_size=2, batch_max_audio_s=10.0, max_batch_size=4, seed=3
        )
        got = list(make_loader(ds, num_workers=2))
        keys = [k for b in got for k in b["keys"]]
        for b in got:
            per_reader[rank, b["worker"]] = per_reader.get((rank, b["worker"]), 0) + len(b["keys"])
        per_rank.append(set(keys))
        batches.append(len(got))
        seen += keys
    assert Counter(seen) == Counter(samples.keys())  # each exactly once
    assert per_rank[0] and per_rank[1] and not per_rank[0] & per_rank[1]
    # the left-over shard is split by sample index, not given whole to one rank (9 vs 6 samples)
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1
    assert (
        sorted(per_reader) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        and max(per_reader.values()) - min(per_reader.values()) <= 1
    )
    assert max(batches) <= estimate_batches(info, 2, 10.0, 4, num_workers=2)  # still an over-estimate


def reader_samples(urls: list[str], world: int, workers: int) -> dict[tuple[int, int], list[str]]:
    """(rank, worker) -> the sample keys ``assign`` gives that reader, read from the shards."""
    keys = {u: shard_samples_of([u]) for u in urls}
    out = {}
    for rank in range(world):
        for worker in range(workers):
            got = []
            for part, mod, res in assign(urls, rank, world, worker, workers):
                stream = [k for u in part for k in keys[u]]
                got += [k for i, k in enumerate(stream) if i % mod == res]
            out[rank, worker] = got
    return out


@pytest.mark.parametrize(
    "n_shards, world, workers", [(5, 2, 1), (5, 2, 2), (3, 1, 2), (5, 4, 3), (4, 3, 2), (2, 3, 2), (5, 1, 1)]
)
def test_shard_counts_not_a_multiple_of_the_readers_are_split_evenly(index, n_shards, world, workers):
    """Shards are dealt out whole only while every reader gets one; the rest is split by sample
    index, so no rank (or worker) is a whole shard short of another -- ``synced`` would stop every
    rank there, leaving the others' extra shards untrained."""
    urls = read_split(index, "train").urls[:n_shards]
    sizes = {len(shard_samples_of([u])) for u in urls}
    assert sizes == {3}  # equal shards: the ranks' shares may differ by one sample at most here
    got = reader_samples(urls, world, workers)
    assert Counter(k for keys in got.values() for k in keys) == Counter(shard_samples_of(urls))  # each once
    ranks = [sum(len(got[r, w]) for w in range(workers)) for r in range(world)]
    assert max(ranks) - min(ranks) <= 1, ranks
    for r in range(world):  # a rank's workers: each part's rounding may add up, but never to a shard
        workers_of_r = [len(got[r, w]) for w in range(workers)]
        assert max(workers_of_r) - min(workers_of_r) < 3, (r, workers_of_r)
    # a function of the shard order, rank and worker only: the same again
    assert reader_samples(urls, world, workers) == got


def test_one_shard_is_split_by_sample_index(index, samples):
    urls = read_split(index, "train").urls
    # fewer shards than readers: everyone reads all and keeps every (world x workers)-th sample
    assert assign(urls[:1], 1, 2, 1, 2) == [(urls[:1], 4, 3)]
    assert assign(urls[:4], 0, 2, 1, 2) == [([urls[2]], 1, 0)]  # enough shards: shards are dealt out whole
    seen = []
    for rank in range(3):
        ds = ShardSpeechDataset(index, "train", rank=rank, world_size=3, batch_max_audio_s=10.0)
        ds.info = type(ds.info)("train", urls[:2], 0, 0.0)  # 2 shards for 3 ranks
        seen += [k for b in make_loader(ds, num_workers=2) for k in b["keys"]]
    first_two = shard_samples_of(urls[:2])
    assert Counter(seen) == Counter(first_two)


def shard_samples_of(urls: list[str]) -> list[str]:
    return [s["__key__"] for u in urls for s in wds.WebDataset([u], shardshuffle=False)]


def test_validation_split_is_separate(index, samples):
    val = [k for b in ShardSpeechDataset(index, "validation", shuffle=False) for k in b["keys"]]
    assert len(val) == len(VALIDATION_SENTENCES)
    assert not set(val) & set(samples)
    assert read_split(index, "validation").samples == len(VALIDATION_SENTENCES)


# ----------------------------------------------------------------------------------- features


def test_features_are_whisper_log_mel_without_30s_padding(index, samples):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=80)
    ds = ShardSpeechDataset(index, "train", batch_max_audio_s=60.0, max_batch_size=64, n_mels=80)
    checked = 0
    for b in ds:
        for i, key in enumerate(b["keys"]):
            n = samples[key]["n"]
            T = int(b["feature_lengths"][i])
            assert T == n // HOP_LENGTH
            # 30 s, cut
            want = fe(samples[key]["audio"], sampling_rate=SR, return_tensors="np")["input_features"][0][
                :, :T
            ]
            got = b["input_features"][i, :, :T].numpy()
            np.testing.assert_allclose(got[:, :-1], want[:, :-1], atol=1e-5)
            # the last frame's window reaches past the end: reflect padding here, zeros in the 30 s one
            np.testing.assert_allclose(got[:, -1], want[:, -1], atol=1e-2)
            assert bool((b["input_features"][i, :, T:] == 0).all())  # zero padding past the length
            checked += 1
    assert checked == len(samples)


def _test_signals(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    t = np.arange(n) / SR
    return {
        "noise": (0.1 * rng.standard_normal(n)).astype(np.float32),
        "chirp": (0.5 * np.sin(2 * np.pi * (100 + 3000 * t / max(t[-1], 1e-9)) * t)).astype(np.float32),
        "silence": np.zeros(n, dtype=np.float32),  # every bin at the 1e-10 clamp
    }


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_whisper_feature_extractor(n_mels):
    """LogMel (torch.stft, cached window and filterbank) == WhisperFeatureExtractor with padding="longest"
    (not padded to 30 s), every frame, odd frame counts and the shortest input included."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SR)
    np.testing.assert_array_equal(mel_filters(n_mels).T.numpy(), fe.mel_filters.astype(np.float32))
    log_mel = LogMel(n_mels)
    for n in (N_FFT // 2 + 1, 333, ODD_N, 5 * SR + 17, 30 * SR):
        for name, audio in _test_signals(n).items():
            # (M, T)
            want = fe(audio, sampling_rate=SR, padding="longest", return_tensors="np")["input_features"][0]
            got = log_mel(torch.from_numpy(audio))
            assert got.shape == want.shape == (n_mels, n // HOP_LENGTH), (name, n)
            np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0, err_msg=f"{name}, {n} samples")


def test_log_mel_writes_into_a_padded_row():
    audio = _test_signals(ODD_N)["noise"]
    log_mel = LogMel(80)
    batch = torch.full((2, 80, 120), 7.0)  # (B, M, T_max)
    log_mel(torch.from_numpy(audio), out=batch[1, :, :107])
    assert torch.equal(batch[1, :, :107], log_mel(torch.from_numpy(audio)))
    assert bool((batch[1, :, 107:] == 7.0).all()) and bool((batch[0] == 7.0).all())  # nothing else touched


def test_flac_header_parse_matches_libsndfile(index):
    for url in read_split(index, "train").urls:
        for s in wds.WebDataset([url], shardshuffle=False):
            with sf.SoundFile(io.BytesIO(s["flac"])) as f:
                assert flac_frames(s["flac"]) == (f.frames, f.samplerate)
    buf = io.BytesIO()  # not a FLAC stream at the start: asked of libsndfile
    sf.write(buf, np.zeros(1234, dtype=np.float32), SR, format="WAV")
    assert flac_frames(buf.getvalue()) == (1234, SR)


def test_worker_batches_equal_in_process_batches(index):
    """Batches built in a loader worker (shared-memory tensors) are the in-process ones, bit for bit."""
    kwargs = dict(batch_max_audio_s=20.0, max_batch_size=4, n_mels=80, seed=3)
    here = list(ShardSpeechDataset(index, "train", **kwargs))
    there = list(make_loader(ShardSpeechDataset(index, "train", **kwargs), num_workers=1))
    assert [b["keys"] for b in there] == [b["keys"] for b in here]
    for a, b in zip(here, there):
        assert torch.equal(a["input_features"], b["input_features"]) and torch.equal(
            a["feature_lengths"], b["feature_lengths"]
        )
        assert b["input_features"].is_contiguous()


def test_odd_frame_count_through_the_encoder(index, samples, tmp_path):
    from llmasr.model import SpeechEncoder
    from llmasr.tiny_models import tiny_whisper

    ds = ShardSpeechDataset(index, "train", batch_max_audio_s=60.0, n_mels=80)
    batch = next(b for b in ds if "oddframes-000000000" in b["keys"])
    i = batch["keys"].index("oddframes-000000000")
    T = int(batch["feature_lengths"][i])
    assert T == ODD_N // HOP_LENGTH == 107
    enc = SpeechEncoder.from_pretrained(tiny_whisper(tmp_path / "w")).eval()
    with torch.no_grad():
        hidden, lens = enc(batch["input_features"], batch["feature_lengths"])
        solo, _ = enc(batch["input_features"][i : i + 1, :, :T])
    assert int(lens[i]) == (T + 1) // 2 == solo.shape[1]
    torch.testing.assert_close(hidden[i, : int(lens[i])], solo[0], atol=1e-4, rtol=1e-4)


def test_128_mel_bins(index):
    b = next(iter(ShardSpeechDataset(index, "train", n_mels=128, batch_max_audio_s=10.0)))
    assert b["input_features"].shape[1] == 128


def test_collate_pads_with_zeros():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)  # (M=2, T=3)
    b = np.ones((2, 5), dtype=np.float32)
    x, lens = pad_features([a, b])
    assert x.shape == (2, 2, 5) and lens.tolist() == [3, 5]
    assert torch.equal(x[0, :, :3], torch.from_numpy(a)) and bool((x[0, :, 3:] == 0).all())
    assert torch.equal(x[1], torch.from_numpy(b))
    batch = collate(["k1", "k2"], ["a b", "c"], [a, b], [[1, 2], [3]], 1.5)
    assert batch["keys"] == ["k1", "k2"] and batch["texts"] == ["a b", "c"]
    assert batch["target_ids"] == [[1, 2], [3]] and batch["n_tokens"] == 3 and batch["audio_s"] == 1.5
    assert batch["feature_lengths"].dtype == torch.long


# ----------------------------------------------------------------------------------- targets


def test_targets_match_the_model_and_whisper(index, llm_tokenizer, tmp_path):
    from llmasr.tiny_models import tiny_whisper

    targets = LLMTargets(llm_tokenizer)
    ds = ShardSpeechDataset(index, "train", targets=targets, batch_max_audio_s=60.0)
    b = next(iter(ds))
    # = LLMASR.encode_targets
    want = [llm_tokenizer(t, add_special_tokens=False)["input_ids"] for t in b["texts"]]
    assert b["target_ids"] == want
    assert b["n_tokens"] == sum(map(len, want))

    wtok = whisper_label_tokenizer(tiny_whisper(tmp_path / "w"))
    ids = WhisperTargets(wtok)("Hello world.")
    assert wtok.convert_ids_to_tokens(ids[:2]) == ["<|startoftranscript|>", "<|notimestamps|>"]
    assert ids[-1] == wtok.convert_tokens_to_ids("<|endoftext|>")
    text_ids = wtok("Hello world.", add_special_tokens=False)["input_ids"]
    assert WhisperTargets(wtok).extra == 3 and len(ids) - 3 == len(text_ids)  # start, <|notimestamps|>, end
    cut = WhisperTargets(wtok, max_length=4)("one two three four five six")
    assert len(cut) == 4 and cut[-1] == ids[-1]


# ------------------------------------------------------------------------------ epochs, resume


def test_passes_are_epochs_and_skip_resumes_exactly(index, samples):
    kw = dict(batch_max_audio_s=8.0, max_batch_size=3, bucket_size=6, seed=5)
    ds = ShardSpeechDataset(index, "train", **kw)
    loader = make_loader(ds, num_workers=2)
    epoch0 = list(loader)
    epoch1 = list(loader)  # the same workers, next pass = next epoch
    assert {b["epoch"] for b in epoch0} == {0} and {b["epoch"] for b in epoch1} == {1}
    assert Counter(k for b in epoch1 for k in b["keys"]) == Counter(samples.keys())
    assert [b["keys"] for b in epoch0] != [b["keys"] for b in epoch1]

    # a fresh dataset at epoch 0 gives the same batches (deterministic given the seed)
    again = list(make_loader(ShardSpeechDataset(index, "train", **kw), num_workers=2))
    assert [b["keys"] for b in again] == [b["keys"] for b in epoch0]

    # skip each worker's first batches: the rest comes, nothing else, nothing twice
    skip = {0: 2, 1: 1}
    resumed = list(make_loader(ShardSpeechDataset(index, "train", skip=skip, **kw), num_workers=2))
    want = [b["keys"] for b in epoch0 if b["worker_batch"] >= skip[b["worker"]]]
    assert sorted(b["keys"] for b in resumed) == sorted(want)
    # and the resumed dataset's next pass is a whole epoch 1
    ds2 = ShardSpeechDataset(index, "train", skip=skip, **kw)
    list(ds2)
    assert [b["keys"] for b in ds2] == [b["keys"] for b in ShardSpeechDataset(index, "train", epoch=1, **kw)]


def test_validation_order_is_fixed(index):
    ds = ShardSpeechDataset(index, "validation", advance_epoch=False, batch_max_audio_s=4.0, seed=2)
    loader = make_loader(ds, num_workers=1)
    first, second = [b["keys"] for b in loader], [b["keys"] for b in loader]
    assert first == second and {b["epoch"] for b in loader} == {0}


def test_estimate_and_synced_without_a_process_group(index):
    info = read_split(index, "train")
    n = estimate_batches(info, world_size=1, batch_max_audio_s=8.0, max_batch_size=3)
    real = len(list(ShardSpeechDataset(index, "train", batch_max_audio_s=8.0, max_batch_size=3)))
    assert real <= n <= 2 * real
    assert estimate_batches(info, 2, 8.0, 3) < n
    assert list(synced(iter([1, 2, 3]))) == [1, 2, 3]


def test_timed_adds_the_wait_for_each_batch_and_stops_with_the_source():
    from tasks.train_data import timed

    def slow():
        for i in range(3):
            time.sleep(0.02)
            yield {"i": i}

    waited = [0.0]
    out = [b["i"] for b in timed(slow(), waited)]
    assert out == [0, 1, 2]
    assert waited[0] >= 0.06  # three sleeps of 20 ms, all spent inside next()
