"""Training data: the WebDataset shards of ``shards/index.json`` -> padded, length-bucketed batches.

    ds = ShardSpeechDataset("runs/demo/shards/index.json", "train", n_mels=80,
                            targets=LLMTargets(tokenizer), rank=rank, world_size=world)
    for batch in make_loader(ds, num_workers=4):    # one pass = one epoch; iterate again for the next
        batch["input_features"]                     # (B, n_mels, T_max) log-mel, zero padded
        batch["feature_lengths"]                    # (B,) valid frames per example

Who reads what.  The split's shards (sorted by path, then shuffled per epoch with the seed, the same
permutation on every rank) are split among the ranks by one rule: of ``S`` shards the first
``world_size x (S // world_size)`` are dealt out whole (``shards[rank::world_size]`` of them); the
``S % world_size`` left over are read by every rank, which keeps sample ``i`` of their stream when
``i % world_size == rank``.  The same rule splits a rank's part among its loader workers (a part
already kept by sample index is dealt out, or split further by sample index, the same way).  So
across ranks x workers every sample of the split is read by exactly one reader once per epoch; with
shards of equal size the ranks' shares differ by a sample or two per worker, never by a shard
(dealing every shard out whole would leave some ranks a shard short, and ``synced`` would stop them
all there: about ``S % world_size`` shards a pass would go untrained).  The left-over
shards cost IO: each of their readers reads them whole to keep its samples.

In each worker: samples are collected into a buffer of ``bucket_size``, sorted by duration and cut
into batches whose padded size (batch size x longest duration) stays within ``batch_max_audio_s``
(and at most ``max_batch_size`` examples): little padding, steady memory.  The batch order within a
buffer is shuffled (seeded by seed, epoch, rank and worker).  Only the batches that will be yielded
are decoded (FLAC -> float32 16 kHz) and turned into Whisper log-mel features (``LogMel``: the
numbers of ``transformers.WhisperFeatureExtractor`` with the encoder's ``num_mel_bins``, computed
with ``torch.stft`` on a cached Hann window and mel filterbank; not padded to 30 s: ``T = samples //
160`` frames, odd ``T`` included) and their transcripts tokenized -- all in the workers, each at one
torch thread.  A sample longer than the encoder's window (``max_frames``) is skipped with a warning,
and so is one shorter than half a Whisper window (``N_FFT // 2`` samples: no frame to compute).

Epochs and resuming.  ``make_loader`` keeps its workers alive between passes; each new pass
(``iter(loader)``) is the next epoch (``epoch + passes``) unless ``advance_epoch=False``
(validation: the same order every time).  Every batch carries ``worker`` and ``worker_batch`` (its
index within that worker's pass); ``skip={worker: n}`` makes the first pass leave out each worker's
first ``n`` batches without decoding them (sample durations come from the FLAC headers), which is
how a resumed run skips what it already trained on: the order is a function of the seed, epoch,
rank and worker only.

Ranks must take the same number of steps (a DeepSpeed step is a collective): ``synced`` stops
every rank as soon as one runs out (an all_reduce MIN of a "has a batch" flag per step).  The few
batches the other ranks still had (their shares are balanced as above; bucketing may still cut
them into a batch or so more) are left out of that epoch.
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from llmasr.audio import SAMPLE_RATE
from llmasr.model import HOP_LENGTH, N_FFT, LogMel

log = logging.getLogger("llmasr.train_data")

TRAIN, VALIDATION = "train", "validation"


# ----------------------------------------------------------------------------------- the index


@dataclass(frozen=True)
class SplitInfo:
    """The shards of one split as index.json lists them."""

    split: str
    urls: list[str]  # absolute paths of the tars, sorted
    samples: int
    audio_s: float

    @property
    def shards(self) -> int:
        return len(self.urls)


def read_split(shard_index: str | Path, split: str) -> SplitInfo:
    """The shards of ``split`` in index.json (paths are relative to the index's folder)."""
    shard_index = Path(shard_index)
    index = json.loads(shard_index.read_text(encoding="utf-8"))
    entries = sorted((e for e in index.get("shards", []) if e["split"] == split), key=lambda e: e["path"])
    base = shard_index.parent
    urls = [str(Path(e["path"]) if Path(e["path"]).is_absolute() else base / e["path"]) for e in entries]
    return SplitInfo(
        split=split,
        urls=urls,
        samples=sum(int(e["samples"]) for e in entries),
        audio_s=float(sum(float(e.get("audio_s", 0.0)) for e in entries)),
    )


def split_texts(info: SplitInfo) -> list[str]:
    """The transcripts of a split's samples, read from the shards' ``.json`` members only (no audio
    decoded), in shard order."""
    import tarfile

    texts = []
    for url in info.urls:
        with tarfile.open(url) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    texts.append(str(json.loads(tar.extractfile(member).read()).get("text", "")))
    return texts


def estimate_batches(
    info: SplitInfo,
    world_size: int,
    batch_max_audio_s: float,
    max_batch_size: int,
    num_workers: int = 0,
    slack: float = 1.25,
) -> int:
    """Batches one rank gets per epoch, estimated from the index's totals (meant to over- rather
    than under-estimate): a batch holds ``batch_max_audio_s / (slack x mean duration)`` samples
    (its longest sample sets the padded size), at most ``max_batch_size``; plus a partly filled
    last batch per loader worker."""
    if info.samples == 0:
        return 0
    mean = info.audio_s / info.samples if info.audio_s > 0 else 1.0
    per_batch = max(1, min(max_batch_size, int(batch_max_audio_s // (slack * mean))))
    return math.ceil(info.samples / world_size / per_batch) + max(num_workers, 1) - 1


# ------------------------------------------------------------------------------------- targets


class LLMTargets:
    """Transcript -> LLM token ids without EOS, exactly as ``LLMASR.encode_targets`` (stages 2, 3)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class WhisperTargets:
    """Transcript -> Whisper decoder ids ``[<|startoftranscript|>, (<|en|>, <|transcribe|>,)
    <|notimestamps|>, text.., <|endoftext|>]`` (stage 1; ``whisper_labels`` drops the start token).

    Longer sequences are cut to ``max_length`` keeping the final <|endoftext|>.  ``extra``: the ids
    around the transcript (start, prefix, <|endoftext|>): the ids of an empty text.
    """

    def __init__(self, tokenizer: Any, max_length: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.extra = len(tokenizer("")["input_ids"])

    def __call__(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text)["input_ids"])
        if self.max_length and len(ids) > self.max_length:
            ids = ids[: self.max_length - 1] + ids[-1:]
        return ids


def whisper_label_tokenizer(path: str | Path, language: str = "english") -> Any:
    """Whisper's tokenizer from a checkpoint folder, set to emit the transcription prefix.

    Multilingual checkpoints get ``<|en|><|transcribe|><|notimestamps|>`` after the start token;
    English-only ones (and plain tokenizer.json files whose post-processor adds the prefix) are
    used as they are.
    """
    from transformers import AutoTokenizer

    from llmasr.model import local_source

    tok = AutoTokenizer.from_pretrained(str(local_source(path)))  # a bundled: name -> its converted folder
    lang_id = tok.convert_tokens_to_ids("<|en|>") if "<|en|>" in tok.get_vocab() else None
    if hasattr(tok, "set_prefix_tokens") and lang_id is not None and len(tok) > 51864:  # multilingual
        tok.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


# -------------------------------------------------------------------------------------- dataset


@dataclass
class _Sample:
    key: str
    flac: bytes
    text: str
    n_samples: int

    @property
    def duration(self) -> float:
        return self.n_samples / SAMPLE_RATE


def flac_frames(data: bytes) -> tuple[int, int]:
    """(samples, sample rate) from the FLAC header, without decoding.

    Read straight from STREAMINFO (the first metadata block, bytes 8..42 after ``fLaC``); a stream
    that starts otherwise (an ID3 tag) or leaves the total unset (0) is asked of libsndfile.
    """
    if len(data) >= 42 and data[:4] == b"fLaC" and data[4] & 0x7F == 0:
        info = data[8:42]  # STREAMINFO: 16+16+24+24 bits of block/frame sizes, then the fields below
        rate = (info[10] << 12) | (info[11] << 4) | (info[12] >> 4)  # 20 bits
        total = ((info[13] & 0x0F) << 32) | int.from_bytes(info[14:18], "big")  # 36 bits
        if total > 0 and rate > 0:
            return total, rate
    with sf.SoundFile(io.BytesIO(data)) as f:
        return int(f.frames), int(f.samplerate)


def decode_flac(data: bytes) -> np.ndarray:
    """FLAC bytes -> float32 mono samples (n,) at 16 kHz."""
    audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    if sr != SAMPLE_RATE:
        raise ValueError(f"shard audio must be {SAMPLE_RATE} Hz, got {sr} Hz")
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return audio


# (urls, modulus, residue): keep sample i of the urls' stream iff i % modulus == residue
Part = tuple[list[str], int, int]


def split_parts(parts: Sequence[Part], n: int, k: int) -> list[Part]:
    """Reader ``k``'s share of ``parts`` when ``n`` readers split them: of each part's ``S`` shards
    the first ``n x (S // n)`` are dealt out whole (``[k::n]``, the part's own filter kept); the
    ``S % n`` left over are read by all ``n``, each keeping every ``n``-th of the samples the part
    keeps (sample ``i`` with ``i % mod == res`` is ``res + mod x j``; reader ``k`` keeps ``j % n == k``).
    """
    out: list[Part] = []
    for urls, mod, res in parts:
        whole = len(urls) - len(urls) % n
        if urls[k:whole:n]:
            out.append((list(urls[k:whole:n]), mod, res))
        if whole < len(urls):
            out.append((list(urls[whole:]), mod * n, res + mod * k))
    return out


def assign(urls: Sequence[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[Part]:
    """What one (rank, worker) reads: parts ``(urls, modulus, residue)``, read in order, each a
    stream of its own; keep sample ``i`` of a part's stream (counted over its shards in order) iff
    ``i % modulus == residue``.  The split's shards are split among the ranks, then each rank's
    share among its workers, by ``split_parts``'s rule (see the module docstring)."""
    return split_parts(split_parts([(list(urls), 1, 0)], world_size, rank), num_workers, worker)


def new_batch_tensor(shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised tensor of ``shape``.  In a loader worker its storage is allocated in shared
    memory right away (as torch's ``default_collate`` does), so handing the batch to the main
    process passes a file descriptor instead of copying the whole tensor once more."""
    shape = tuple(int(d) for d in shape)
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return torch.empty(0, dtype=dtype).set_(torch.UntypedStorage._new_shared(nbytes), 0, shape)


def pad_features(features: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(n_mels, T_i)] -> (B, n_mels, T_max) zero padded on the right, lengths (B,)."""
    mats = [torch.as_tensor(f, dtype=torch.float32) for f in features]
    lengths = torch.tensor([m.shape[-1] for m in mats], dtype=torch.long)  # (B,)
    out = new_batch_tensor((len(mats), mats[0].shape[0], int(lengths.max())))  # (B, M, T_max)
    for i, m in enumerate(mats):
        out[i, :, : m.shape[-1]] = m
        out[i, :, m.shape[-1] :] = 0.0
    return out, lengths


def batch_dict(
    keys: Sequence[str],
    texts: Sequence[str],
    input_features: torch.Tensor,
    lengths: torch.Tensor,
    target_ids: Sequence[Sequence[int]],
    audio_s: float,
) -> dict[str, Any]:
    """The batch format: {"input_features" (B, M, T_max), "feature_lengths" (B,), "texts",
    "target_ids", "keys", "audio_s" (total real seconds), "n_tokens" (target tokens)}."""
    return {
        "input_features": input_features,
        "feature_lengths": lengths,
        "texts": list(texts),
        "target_ids": [list(t) for t in target_ids],
        "keys": list(keys),
        "audio_s": float(audio_s),
        "n_tokens": int(sum(len(t) for t in target_ids)),
    }


def collate(
    keys: Sequence[str],
    texts: Sequence[str],
    features: Sequence[np.ndarray | torch.Tensor],
    target_ids: Sequence[Sequence[int]],
    audio_s: float,
) -> dict[str, Any]:
    """One padded batch (``batch_dict``'s format) from per-example (M, T_i) features."""
    input_features, lengths = pad_features(features)  # (B, M, T_max), (B,)
    return batch_dict(keys, texts, input_features, lengths, target_ids, audio_s)


class ShardSpeechDataset(IterableDataset):
    """Batches of one split of the shards for one rank (see the module docstring).

    ``targets``: text -> token ids (``LLMTargets`` for stages 2/3, ``WhisperTargets`` for stage 1;
    None: no ``target_ids``).  ``max_frames``: the encoder's window (2 x max_source_positions).
    """

    def __init__(
        self,
        shard_index: str | Path,
        split: str = TRAIN,
        *,
        n_mels: int = 80,
        targets: Callable[[str], list[int]] | None = None,
        rank: int = 0,
        world_size: int = 1,
        batch_max_audio_s: float = 400.0,
        max_batch_size: int = 64,
        bucket_size: int = 512,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        advance_epoch: bool = True,
        max_frames: int | None = 3000,
        skip: dict[int, int] | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if batch_max_audio_s <= 0 or max_batch_size < 1 or bucket_size < 1:
            raise ValueError("batch_max_audio_s must be > 0, max_batch_size and bucket_size >= 1")
        self.info = read_split(shard_index, split)
        self.split = split
        self.n_mels = n_mels
        self.targets = targets
        self.rank, self.world_size = rank, world_size
        self.batch_max_audio_s = batch_max_audio_s
        self.max_batch_size = max_batch_size
        self.bucket_size = bucket_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.advance_epoch = advance_epoch
        self.max_frames = max_frames
        self.skip = {int(k): int(v) for k, v in (skip or {}).items()}
        self._passes = 0  # passes started by this copy (a worker's copy lives as long as the worker)
        self._log_mel: LogMel | None = None  # built in the process that uses it (each worker)

    # ---- reading
    def _stream(self, parts: Sequence[Part]) -> Iterator[_Sample]:
        """The samples ``assign``'s parts keep, part after part (one stream: one bucketing)."""
        for urls, mod, res in parts:
            yield from self._part_stream(urls, mod, res)

    def _part_stream(self, urls: list[str], mod: int, res: int) -> Iterator[_Sample]:
        import webdataset as wds

        if not urls:
            return
        pipeline = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())
        for i, raw in enumerate(pipeline):
            if i % mod != res:
                continue
            key = raw["__key__"]
            if "flac" not in raw or "json" not in raw:
                log.warning("sample %s in %s lacks .flac or .json; skipped", key, raw.get("__url__"))
                continue
            meta = json.loads(raw["json"])
            n, sr = flac_frames(raw["flac"])
            if sr != SAMPLE_RATE:
                raise ValueError(
                    f"sample {key} in {raw.get('__url__')}: {sr} Hz audio, shards must be {SAMPLE_RATE} Hz"
                )
            if self.max_frames is not None and n // HOP_LENGTH > self.max_frames:
                log.warning(
                    "sample %s is %.1f s, longer than the encoder's %d frames; skipped",
                    key,
                    n / SAMPLE_RATE,
                    self.max_frames,
                )
                continue
            if n <= N_FFT // 2:  # the STFT's reflect padding needs more; fewer than 2 frames anyway
                log.warning("sample %s has %d audio samples, too few for one feature frame; skipped", key, n)
                continue
            yield _Sample(key, raw["flac"], str(meta.get("text", "")), n)

    # ---- batching
    def _buckets(self, samples: list[_Sample], rng: random.Random) -> list[list[_Sample]]:
        samples = sorted(samples, key=lambda s: (s.n_samples, s.key))
        batches: list[list[_Sample]] = []
        cur: list[_Sample] = []
        for s in samples:  # ascending: s is the longest of cur + [s]
            if cur and (
                (len(cur) + 1) * s.duration > self.batch_max_audio_s or len(cur) >= self.max_batch_size
            ):
                batches.append(cur)
                cur = []
            if not cur and s.duration > self.batch_max_audio_s:
                log.warning(
                    "sample %s (%.1f s) alone exceeds batch_max_audio_s=%s",
                    s.key,
                    s.duration,
                    self.batch_max_audio_s,
                )
            cur.append(s)
        if cur:
            batches.append(cur)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def _plans(self, stream: Iterable[_Sample], rng: random.Random) -> Iterator[list[_Sample]]:
        buffer: list[_Sample] = []
        for s in stream:
            buffer.append(s)
            if len(buffer) >= self.bucket_size:
                yield from self._buckets(buffer, rng)
                buffer = []
        if buffer:
            yield from self._buckets(buffer, rng)

    # ---- features
    def features(self, audio: np.ndarray | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Whisper log-mel (n_mels, samples // 160), not padded to 30 s (into ``out`` if given)."""
        if self._log_mel is None:
            self._log_mel = LogMel(self.n_mels)
        return self._log_mel(torch.as_tensor(audio, dtype=torch.float32), out=out)  # (n_mels, T)

    def _log_mel_batch(self, plan: list[_Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode and featurize ``plan`` straight into one zero-padded (B, M, T_max) tensor, lengths (B,)."""
        audio = [torch.from_numpy(decode_flac(s.flac)) for s in plan]  # [(n_i,)] float32
        lengths = torch.tensor([len(a) // HOP_LENGTH for a in audio], dtype=torch.long)  # (B,)
        out = new_batch_tensor((len(plan), self.n_mels, int(lengths.max())))  # (B, M, T_max)
        for i, a in enumerate(audio):
            T = int(lengths[i])
            self.features(a, out=out[i, :, :T])  # (M, T_i) written in place
            out[i, :, T:] = 0.0
        return out, lengths

    def _build(self, plan: list[_Sample]) -> dict[str, Any]:
        feats, lengths = self._log_mel_batch(plan)  # (B, M, T_max), (B,)
        texts = [s.text for s in plan]
        ids = [self.targets(t) for t in texts] if self.targets is not None else [[] for _ in texts]
        return batch_dict([s.key for s in plan], texts, feats, lengths, ids, sum(s.duration for s in plan))

    # ---- iteration
    def current_epoch(self) -> int:
        return self.epoch + (self._passes if self.advance_epoch else 0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.current_epoch()
        skip = self.skip.get(worker, 0) if self._passes == 0 else 0
        self._passes += 1
        urls = list(self.info.urls)
        if self.shuffle:
            random.Random(f"shards|{self.seed}|{epoch}").shuffle(urls)  # the same on every rank
        parts = assign(urls, self.rank, self.world_size, worker, workers)
        rng = random.Random(f"batches|{self.seed}|{epoch}|{self.rank}|{worker}")
        for index, plan in enumerate(self._plans(self._stream(parts), rng)):
            if index < skip:
                continue  # consumed before the checkpoint this run resumed from: not decoded
            batch = self._build(plan)
            batch.update(worker=worker, worker_batch=index, epoch=epoch)
            yield batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # feature extraction per worker; the trainer owns the other cores


def make_loader(dataset: ShardSpeechDataset, num_workers: int = 0) -> DataLoader:
    """A DataLoader over pre-built batches (``batch_size=None``), workers kept between passes."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )


# ------------------------------------------------------------------------------ rank agreement


def all_ranks_have(has: bool, device: torch.device | str | None = None) -> bool:
    """True when every rank has a batch (all_reduce MIN of a flag); ``has`` without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return has
    flag = torch.tensor([1 if has else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def timed(batches: Iterable[dict[str, Any]], waited: list[float]) -> Iterator[dict[str, Any]]:
    """Yield ``batches``, adding the seconds spent waiting for each to ``waited[0]``."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        waited[0] += time.perf_counter() - t0
        if batch is None:
            return
        yield batch


def synced(
    batches: Iterable[dict[str, Any]], device: torch.device | str | None = None
) -> Iterator[dict[str, Any]]:
    """Yield batches while every rank still has one; all ranks stop at the same step."""
    it = iter(batches)
    while True:
        batch = next(it, None)
        if not all_ranks_have(batch is not None, device):
            return
        yield batch  # type: ignore[misc]
