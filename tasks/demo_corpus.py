"""The demo corpus: espeak-ng "videos" with caption files, generated on the machine (no big files in git).

    llmasr demo-corpus --out DIR  # also run by `llmasr data --profile demo` (into <work_dir>/demo-corpus)

``generate_corpus(cfg.demo)`` serves every profile with a ``demo:`` section: kind ``demo`` is this
module's ``generate``; kind ``small`` is ``tasks.small_corpus.generate`` (an hour or more of varied
voices and text, with held-out and zero-shot test sets).

Layout written under ``out``:

    videos/         <name>.wav|.flac|.mp3 with <name>.vtt or .srt captions (some have none)
    zero_shot/      held-out sentences with rare (medical) words never spoken in videos/,
                    manifest.jsonl {audio, text} for the zero-shot evaluation
    corpus.json     what was generated: every item, its sentences, and what each is meant to test

So that every filter rule has something to do, some items are made odd on purpose: captions that
belong to another video (caption WER), a one-word cue (too short), a repeated phrase (loop), a
filler-only line (simplicity), noise and silence under a caption (empty or garbage labels), a
closing "thanks for watching" without captions (known hallucination phrase), one cue over 20 s
(too long), captions missing (VAD), a zero-byte file and a text file named .mp3 (failed items),
and a file name with spaces and unicode.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from llmasr.atomic import write_json, write_text
from llmasr.text import normalize
from tasks.captions import Cue, write_srt, write_vtt

if TYPE_CHECKING:
    from llmasr.config import DemoConfig

ESPEAK_RATE = 22050

TRAIN_SENTENCES = """
The weather was warm enough to eat lunch outside on the terrace.
She packed her bags the night before the early train to the coast.
Our team finished the quarterly report two days ahead of schedule.
The old bridge over the river was repaired last summer.
He learned to play the guitar by watching videos every evening.
The museum opens at nine and closes late on Fridays.
We planted tomatoes and beans in the garden behind the house.
The library added a quiet room for students who need to focus.
Fresh bread from the bakery on the corner sells out by noon.
The children built a small boat from pieces of driftwood.
My neighbour repairs bicycles in his garage on weekends.
The concert was moved indoors because of the heavy rain.
A good map makes a long hike much easier to plan.
The city council voted to extend the bus line to the harbour.
She wrote three chapters of her novel during the holidays.
The kitchen smelled of cinnamon and roasted apples.
Please remember to switch off the lights when you leave the office.
The football match ended in a draw after extra time.
Our cat sleeps on the windowsill whenever the sun comes out.
The farmer sells eggs and honey at the Saturday market.
They painted the fence white and fixed the broken gate.
The new software update makes the laptop start much faster.
We watched the sunset from the top of the hill.
The teacher asked everyone to read the first two pages aloud.
A strong wind knocked over several trees in the park.
The restaurant serves soup, salad and a choice of pasta.
He forgot his umbrella and walked home in the drizzle.
The students visited a factory that makes glass bottles.
Winter evenings are perfect for long conversations by the fire.
The pilot announced that we would land twenty minutes early.
Her grandmother taught her how to knit a warm scarf.
The store reopened after a month of careful renovation.
We need more chairs for the meeting on Thursday afternoon.
The river was so clear that we could see small fish swimming.
A friendly guide showed us around the castle gardens.
The price of coffee went up again this spring.
The orchestra practised the symphony for six weeks.
He keeps a notebook to write down ideas for new songs.
The hotel room had a balcony with a view of the lake.
Traffic on the main road was slow because of the parade.
The scientists measured the temperature of the lake every hour.
She always carries a book in case the train is late.
The volunteers cleaned the beach and collected the plastic.
Our village celebrates the harvest with music and dancing.
The printer ran out of paper in the middle of the job.
A small boat carried the visitors across to the island.
The actors rehearsed the final scene until midnight.
He bought a second hand camera at the flea market.
The path through the forest was covered in yellow leaves.
They opened a small shop that sells handmade furniture.
The train station has a cafe that serves hot chocolate.
Every morning she runs five kilometres before breakfast.
The bakery uses flour from a mill in the next valley.
We repaired the roof before the autumn storms arrived.
The documentary explained how bees find their way home.
The workshop teaches people how to build wooden tables.
His presentation about solar panels was clear and useful.
The ferry leaves every hour from the northern pier.
The garden party was a success despite the cloudy sky.
She translated the letter from French into English.
The mountain village has only one road and one shop.
Our choir will sing at the town hall next month.
The engineer checked every bolt on the new crane.
A warm bowl of soup is the best cure for a cold day.
The puppy chased its tail around the living room.
They counted the votes late into the night.
The chef added a pinch of salt and a little lemon juice.
Thick fog covered the valley until late in the morning.
The exhibition shows paintings from three centuries.
We rented bicycles and rode along the canal to the mill.
""".strip().splitlines()

# Held out: spoken only in zero_shot/, never in videos/, so R-WER measures truly unseen words.
ZERO_SHOT_SENTENCES = """
The patient was prescribed amoxicillin for the chest infection.
An electrocardiogram showed signs of tachycardia during the exercise test.
The doctor increased the dose of metformin after the blood test.
Her symptoms suggested a mild case of gastroenteritis.
The nurse checked for hypoglycaemia before the evening meal.
He was referred to a dermatologist for the persistent eczema.
The scan revealed a small aneurysm near the left kidney.
Ibuprofen can irritate the stomach if taken without food.
The surgeon recommended a laparoscopy to confirm the diagnosis.
Chronic bronchitis is common among long term smokers.
The physiotherapist treated the tendinitis in his shoulder.
A course of prednisolone reduced the inflammation quickly.
The child was vaccinated against measles and rubella.
Atrial fibrillation raises the risk of a stroke.
The pharmacist warned him about taking warfarin with aspirin.
An ultrasound confirmed the presence of gallstones.
She has suffered from migraines and vertigo since childhood.
The biopsy showed no evidence of melanoma.
Salbutamol inhalers relieve the symptoms of asthma.
The consultant suspected appendicitis and ordered a scan.
""".strip().splitlines()

# voices and speeds that tiny.en transcribes at ~15% WER (measured); en-029 was ~40%
VOICES = ["en", "en-us+m7", "en+f3", "en-us+m1", "en-us", "en-gb-x-rp"]
SPECIAL = {  # sentences that exist to trip one filter rule each
    "too_short": "Yes.",
    "loop": "Go go go go go go go go.",
    "filler": "Okay, thank you.",
    "thanks": "Thanks for watching, and see you next time.",
}


def rare_words() -> set[str]:
    """Normalised words of the zero-shot sentences that never occur in the training sentences."""
    train = {w for s in TRAIN_SENTENCES + list(SPECIAL.values()) for w in normalize(s).split()}
    return {w for s in ZERO_SHOT_SENTENCES for w in normalize(s).split()} - train


@dataclass
class DemoItem:
    name: str
    ext: str
    captions: str | None  # "vtt", "srt" or None
    purpose: str
    sentences: list[str] = field(default_factory=list)
    caption_texts: list[str] = field(default_factory=list)


def speak(text: str, voice: str, speed: int, workdir: Path) -> np.ndarray:
    """espeak-ng -> float32 samples at 22.05 kHz, shape (samples,)."""
    out = workdir / "speak.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(out), text], check=True, capture_output=True
    )
    audio, sr = sf.read(str(out), dtype="float32")
    assert sr == ESPEAK_RATE, f"espeak-ng wrote {sr} Hz"
    return audio


def plan_items(n_items: int, rng: random.Random) -> list[DemoItem]:
    """Which items exist and what each one is for."""
    pool = TRAIN_SENTENCES[:]
    rng.shuffle(pool)
    plan: list[DemoItem] = []
    for i in range(n_items):
        sentences = [pool[(i * 5 + k) % len(pool)] for k in range(rng.randint(4, 6))]
        if i < 4:
            purpose, captions = "wrong_captions", "vtt"
        elif i < 9:
            purpose, captions = "no_captions", None
        elif i == 9:
            purpose, captions = "filter_specials", "vtt"
            sentences = [
                sentences[0],
                SPECIAL["too_short"],
                sentences[1],
                SPECIAL["loop"],
                SPECIAL["filler"],
                sentences[2],
            ]
        elif i == 10:
            purpose, captions = "noise_and_silence", "vtt"
        elif i == 11:
            purpose, captions = "thanks_for_watching", None
            sentences = sentences[:3] + [SPECIAL["thanks"]]
        elif i == 12:
            purpose, captions = "long_cue", "vtt"
            sentences = [pool[(i * 5 + k) % len(pool)] for k in range(7)]
        else:
            purpose, captions = "clean", "srt" if i % 4 == 0 else "vtt"
        ext = {0: ".wav", 1: ".flac", 2: ".mp3"}[i % 3]
        name = f"Café talk {i:02d}" if i == 13 else f"video_{i:02d}"
        plan.append(DemoItem(name, ext, captions, purpose, sentences))
    for k, item in enumerate(plan):
        if item.purpose == "wrong_captions":  # captions of another (clean) video, same cue count
            donor = plan[-(k + 1)].sentences
            item.caption_texts = [donor[j % len(donor)] for j in range(len(item.sentences))]
        else:
            item.caption_texts = list(item.sentences)
    return plan


def render_item(
    item: DemoItem, rng: random.Random, nprng: np.random.Generator, workdir: Path
) -> tuple[np.ndarray, list[Cue]]:
    """The item's audio at 22.05 kHz and its caption cues."""
    voice = VOICES[rng.randrange(len(VOICES))]
    speed = rng.randint(145, 160)
    pieces = [np.zeros(int(0.5 * ESPEAK_RATE), np.float32)]
    cues: list[Cue] = []
    t = 0.5
    long_cue_start = None
    for k, sentence in enumerate(item.sentences):
        audio = speak(sentence, voice, speed, workdir)
        dur = len(audio) / ESPEAK_RATE
        text = item.caption_texts[k]
        if item.purpose == "long_cue":
            long_cue_start = t if long_cue_start is None else long_cue_start
        else:
            cues.append(Cue(round(t, 3), round(t + dur, 3), text))
        pieces.append(audio)
        # pauses of 0.3-1.6 s: some below segment.max_gap_s (cues merge), some above (they split)
        pause = 0.3 if item.purpose == "long_cue" else rng.choice([0.3, 0.6, 1.2, 1.6])
        if item.purpose == "filter_specials":
            pause = 1.6  # keep every special sentence a segment of its own
        pieces.append(np.zeros(int(pause * ESPEAK_RATE), np.float32))
        t += dur + pause
    if item.purpose == "long_cue":
        cues.append(Cue(round(long_cue_start or 0.5, 3), round(t - 0.3, 3), " ".join(item.caption_texts)))
    if item.purpose == "noise_and_silence":
        noise = (0.05 * nprng.standard_normal(int(3.0 * ESPEAK_RATE))).astype(np.float32)
        silence = np.zeros(int(3.0 * ESPEAK_RATE), np.float32)
        cues.append(Cue(round(t, 3), round(t + 3.0, 3), "The band played a loud song for the crowd."))
        cues.append(Cue(round(t + 4.6, 3), round(t + 7.6, 3), "Nobody said a word for a while."))
        pieces += [
            noise,
            np.zeros(int(1.6 * ESPEAK_RATE), np.float32),
            silence,
            np.zeros(int(0.5 * ESPEAK_RATE), np.float32),
        ]
    return np.concatenate(pieces), cues


def _save_audio(path: Path, audio: np.ndarray) -> None:
    if path.suffix == ".mp3":
        tmp = path.with_suffix(".tmp.wav")
        sf.write(str(tmp), audio, ESPEAK_RATE)
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(tmp), "-b:a", "64k", str(path)],
            check=True,
        )
        tmp.unlink()
    else:
        sf.write(str(path), audio, ESPEAK_RATE)


def generate(out: Path | str, n_items: int = 30, seed: int = 0, force: bool = False) -> Path:
    """Generate the corpus under ``out`` (skipped when corpus.json shows the same settings)."""
    out = Path(out)
    marker = out / "corpus.json"
    settings = {"n_items": n_items, "seed": seed, "version": 4}
    if not force and marker.is_file() and json.loads(marker.read_text())["settings"] == settings:
        return out
    if shutil.which("espeak-ng") is None:
        raise RuntimeError(
            "espeak-ng is not installed; the demo corpus needs it (Debian: apt-get install espeak-ng)"
        )
    if out.exists():
        shutil.rmtree(out)
    videos, zero = out / "videos", out / "zero_shot"
    videos.mkdir(parents=True)
    zero.mkdir()
    work = out / ".tmp"
    work.mkdir()
    rng, nprng = random.Random(seed), np.random.default_rng(seed)
    plan = plan_items(n_items, rng)
    for item in plan:
        audio, cues = render_item(item, rng, nprng, work)
        _save_audio(videos / f"{item.name}{item.ext}", audio)
        if item.captions == "vtt":
            write_vtt(videos / f"{item.name}.vtt", cues)
        elif item.captions == "srt":
            write_srt(videos / f"{item.name}.srt", cues)
    (videos / "broken.wav").write_bytes(b"")  # zero bytes: a failed item
    (videos / "not_audio.mp3").write_text("this is a text file, not audio\n")
    rows = []
    for k, sentence in enumerate(ZERO_SHOT_SENTENCES):
        audio = speak(sentence, VOICES[k % len(VOICES)], 160, work)
        name = f"zs_{k:02d}.wav"
        sf.write(
            str(zero / name),
            np.concatenate([np.zeros(int(0.3 * ESPEAK_RATE), np.float32), audio]),
            ESPEAK_RATE,
        )
        rows.append({"audio": name, "text": sentence})
    write_text(zero / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    shutil.rmtree(work)
    write_json(
        marker, {"settings": settings, "items": [asdict(i) for i in plan], "rare_words": sorted(rare_words())}
    )
    return out


def generate_corpus(demo: DemoConfig, out: Path | str | None = None, force: bool = False) -> Path:
    """Generate the corpus a config's ``demo:`` section describes (once; reused while it matches)."""
    if out is None and "${" in demo.corpus_dir:  # a DemoConfig outside a PipelineConfig: nothing expanded it
        from llmasr.config import ConfigError

        raise ConfigError(
            f"demo.corpus_dir {demo.corpus_dir!r} is not a folder yet: load the config "
            "(llmasr.config.load_config) or pass out="
        )
    target = Path(out if out is not None else demo.corpus_dir)
    if demo.kind == "small":
        from tasks import small_corpus

        return small_corpus.generate(target, force=force, **demo.generate_kwargs())
    return generate(target, force=force, **demo.generate_kwargs())
