"""transcribe: your own audio files -> text, with a run's trained model (stage 3, 2 or 1).

    llmasr transcribe --work-dir runs/mine talk.mp3 interviews/ --out transcripts --format srt

Plain functions the CLI (``llmasr transcribe``, cli/transcribe.py) strings together; a test calls them
without the CLI:

    stage = choose_stage(cfg.work_dir, requested)   # the highest complete stage unless one is asked for
    files = find_audio(paths)                       # folders walked for audio files
    result = transcribe(files, cfg, stage)          # a Transcript per file: text, timed segments
    write_outputs(result.records, out_dir, "srt")   # or stdout_text(result.records)

Everything that can be wrong with the request (work dir, stages, paths, files that are not audio,
the output folder) fails with a ``TranscribeError`` before any model loads.

Decoding is evaluation's, so a transcript is what ``llmasr evaluate`` would score: the stage's
system comes from ``tasks.evaluate.system_specs`` (stage 1 = Whisper with the stage-1 encoder
through transformers, ``llmasr-stage1``; stage 2 = the LLM-ASR without LoRA; stage 3 = the LLM-ASR
with its LoRA), its settings are the config's ``eval`` section (``EvalConfig``), and the pieces
come from ``tasks.pieces.plan_pieces``: a file no longer than ``eval.max_piece_s`` is one piece, a
longer one is cut by VAD with the ``segment`` settings.  Each decoded piece is one segment (an SRT
cue, a ``segments`` entry of the JSON line); a file's text is its pieces' texts joined by a space.
Any format the decoder reads (libsndfile, else PyAV/ffmpeg: the ingest's formats) is taken.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmasr import progress
from llmasr.atomic import write_text
from llmasr.config import ConfigError, EvalConfig, PipelineConfig
from tasks import decode
from tasks import evaluate as ev
from tasks.checkpoints import STAGES, read_stage, stage_dir
from tasks.pieces import Piece, plan_pieces
from tasks.testsets import TestUtterance

log = logging.getLogger("llmasr.transcribe")

FORMATS = ("txt", "srt", "jsonl")
JSONL_NAME = "transcripts.jsonl"
STAGE_KINDS = {1: "Whisper with the stage-1 encoder", 2: "LLM-ASR without LoRA", 3: "LLM-ASR with its LoRA"}


class TranscribeError(ConfigError):
    """A request that cannot be transcribed (no trained stage, a missing or non-audio file, a bad
    output folder): raised before any model loads."""


@dataclass(frozen=True)
class Segment:
    """One decoded piece of a file: its stretch (seconds from the file's start) and its text."""

    start_s: float
    end_s: float
    text: str


@dataclass
class Transcript:
    """One file's transcript; ``error`` says why some piece has no text (None when all decoded)."""

    path: str
    text: str
    segments: list[Segment]
    duration_s: float
    stage: int
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "text": self.text,
            "segments": [{"start": s.start_s, "end": s.end_s, "text": s.text} for s in self.segments],
            "duration_s": self.duration_s,
            "stage": self.stage,
            "error": self.error,
        }


@dataclass
class TranscribeResult:
    """The transcripts of one call, with what decoding cost (model loading not included)."""

    records: list[Transcript]
    system: str
    stage: int
    audio_s: float
    decode_s: float
    load_s: float
    tokens: int
    pieces: int
    num_beams: int
    failed: list[Transcript] = field(default_factory=list)

    @property
    def rtfx(self) -> float | None:
        """Seconds of audio transcribed per second of decoding (1 / RTF)."""
        return self.audio_s / self.decode_s if self.decode_s > 0 else None


# ---------------------------------------------------------------------------------- the request


def complete_stages(work_dir: str | Path) -> list[int]:
    return [s for s in STAGES if read_stage(stage_dir(work_dir, s)) is not None]


def _train_command(work_dir: Path, done: list[int], stage: int) -> str:
    """The ``llmasr train`` that makes ``stage`` complete: from the first stage whose predecessor is
    done (a stage needs the one before it; stage 1 needs none)."""
    first = stage
    while first > 1 and first - 1 not in done:
        first -= 1
    return f"llmasr train --work-dir {work_dir} --stages {','.join(map(str, range(first, stage + 1)))}"


def choose_stage(work_dir: str | Path, stage: int | None = None) -> int:
    """The stage to transcribe with: ``stage`` when it is complete in ``work_dir``, else (None) the
    highest complete one.  Raises TranscribeError naming what exists and the command that trains it."""
    root = Path(work_dir)
    if not root.is_dir():
        raise TranscribeError(
            f"work dir {root} does not exist: pass --work-dir of a trained run (one made by `llmasr train "
            f"--work-dir {root}`)"
        )
    if stage is not None and stage not in STAGES:
        raise TranscribeError(
            f"--stage {stage}: the stages are 1 (Whisper with the stage-1 encoder), 2 (LLM-ASR without LoRA) "
            "and 3 (with LoRA)"
        )
    done = complete_stages(root)
    if not done:
        started = [f"stage{s}" for s in STAGES if stage_dir(root, s).is_dir()]
        found = (
            f"{', '.join(started)} started, none complete (no stage.json with complete=true)"
            if started
            else f"no stage folder under {root / 'checkpoints'}"
        )
        raise TranscribeError(
            f"{root} has no complete trained stage ({found}): train it with `llmasr train --work-dir {root}`"
        )
    if stage is None:
        return max(done)
    if stage not in done:
        raise TranscribeError(
            f"stage {stage} is not complete in {root} (complete: {', '.join(f'stage{s}' for s in done)}): "
            f"use --stage {max(done)}, or train it with `{_train_command(root, done, stage)}`"
        )
    return stage


def find_audio(paths: Sequence[str | Path]) -> list[Path]:
    """The files to transcribe: each file as given (whether it is audio is found when it is read),
    each folder walked for audio files as ingest walks a folder source (``tasks.ingest.expand_source``:
    recursive, sorted, ``AUDIO_EXTENSIONS``, hidden files skipped); a file named twice is taken once.
    Raises TranscribeError for paths that do not exist and folders without audio files."""
    from tasks.ingest import AUDIO_EXTENSIONS, Source, expand_source

    missing, empty, out, seen = [], [], [], set()
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = [Path(f.path) for f in expand_source(Source("folder", str(p)))[0]]
            if not found:
                empty.append(str(p))
        elif p.is_file():
            found = [p]
        else:
            missing.append(str(raw))
            continue
        for f in found:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                out.append(f)
    if missing:
        raise TranscribeError(f"no such file or folder: {', '.join(missing)}")
    if empty:
        raise TranscribeError(f"no audio files ({' '.join(sorted(AUDIO_EXTENSIONS))}) in {', '.join(empty)}")
    if not out:
        raise TranscribeError("nothing to transcribe: pass audio files or folders")
    return out


def check_output(out_dir: str | Path | None, fmt: str | None) -> None:
    """``--out``/``--format`` before any work: a format needs --out (stdout gets the text), and
    --out must be a folder or not exist yet."""
    if fmt is not None and fmt not in FORMATS:
        raise TranscribeError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if out_dir is None:
        if fmt not in (None, "txt"):
            raise TranscribeError(
                f"--format {fmt} writes files: add --out DIR (without --out the text goes to stdout)"
            )
        return
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TranscribeError(f"--out {out} is a file: pass a folder (it is created when missing)")


def plan_files(files: Sequence[Path], cfg: PipelineConfig) -> tuple[list[Piece], dict[str, float]]:
    """Every file's pieces (``tasks.pieces.plan_pieces``, evaluation's cut) and duration, keyed by
    ``str(path)``.  Files that do not decode as audio raise one TranscribeError naming each."""
    pieces: list[Piece] = []
    durations: dict[str, float] = {}
    bad: list[str] = []
    progress.start("cut", len(files), unit="files")
    for f in files:
        problems: list[str] = []
        kept, mine, seconds = plan_pieces(
            [TestUtterance(str(f), str(f), "")], cfg.eval.max_piece_s, cfg.segment, problems
        )
        if kept:
            pieces += mine
            durations.update(seconds)
            for p in problems:  # VAD found no speech: kept, with an empty text
                log.info("%s", p)
        else:
            bad.append("; ".join(problems) or f"{f}: not readable")
        progress.advance("cut")
    if bad:
        raise TranscribeError(
            f"not audio, or audio that does not decode ({len(bad)} of {len(files)} files): " + " | ".join(bad)
        )
    return pieces, durations


# ------------------------------------------------------------------------------------- decoding


def stage_system(cfg: PipelineConfig, stage: int, settings: EvalConfig) -> decode.System:
    """The evaluation system of one stage checkpoint (``llmasr-stage<N>``), not loaded yet."""
    only = cfg.eval.model_copy(update={"stages": [stage], "baselines": [], "hyps": []})
    specs, notes = ev.system_specs(cfg.work_dir, only)
    if not specs:
        raise TranscribeError("; ".join(notes) or f"no stage {stage} checkpoint in {cfg.work_dir}")
    return ev.make_systems(specs, settings)[0]


def transcribe(files: Sequence[Path], cfg: PipelineConfig, stage: int) -> TranscribeResult:
    """Transcribe ``files`` with stage ``stage`` of ``cfg.work_dir`` (see the module docstring).

    Files are cut first (errors before the model loads), then every piece of every file is decoded
    in batches of ``eval.batch_size``.  A piece that fails leaves its file's other pieces' text and
    sets the file's ``error``.  Reports to ``llmasr.progress`` bars "cut" (files) and "decode" (pieces).
    """
    pieces, durations = plan_files(files, cfg)
    settings = cfg.eval
    system = stage_system(cfg, stage, settings)
    t0 = time.perf_counter()
    system.load()
    load_s = time.perf_counter() - t0
    progress.start("decode", len(pieces), unit="pieces")
    try:
        hyps, errors, decode_s = decode.decode_pieces(
            system, pieces, settings.batch_size, lambda n: progress.advance("decode", n)
        )
    finally:
        system.close()
    by_file: dict[str, list[Piece]] = {}
    for p in pieces:
        by_file.setdefault(p.utt_id, []).append(p)
    records = []
    for f in files:
        mine = sorted(by_file.get(str(f), []), key=lambda p: p.index)
        segments = [Segment(round(p.start_s, 3), round(p.end_s, 3), hyps[p]) for p in mine if hyps.get(p)]
        failed = [p for p in mine if p in errors]
        error = None
        if failed:
            p = failed[0]
            error = (
                f"{len(failed)} of {len(mine)} pieces failed; piece {p.index + 1} "
                f"({p.start_s:.1f}-{p.end_s:.1f} s): {errors[p]}"
            )
        text = " ".join(s.text for s in segments)
        records.append(Transcript(str(f), text, segments, round(durations[str(f)], 3), stage, error))
    result = TranscribeResult(
        records=records,
        system=system.name,
        stage=stage,
        audio_s=float(sum(durations.values())),
        decode_s=decode_s,
        load_s=load_s,
        tokens=system.tokens,
        pieces=len(pieces),
        num_beams=settings.num_beams,
        failed=[r for r in records if r.error],
    )
    log.info(
        "%s: %d files, %d pieces, %.1f s of audio in %.1f s (RTFx %.1f), %d tokens, loaded in %.1f s",
        system.name,
        len(files),
        len(pieces),
        result.audio_s,
        decode_s,
        result.rtfx or 0.0,
        result.tokens,
        load_s,
    )
    return result


# -------------------------------------------------------------------------------------- outputs


def output_names(paths: Sequence[str]) -> dict[str, str]:
    """The output file name (no extension) of each input: its stem, or, where several inputs share
    a stem (``a/talk.wav`` and ``b/talk.mp3``), ingest's item id of each (stem + a hash of its path)."""
    from tasks.ingest import local_item_id

    stems: dict[str, int] = {}
    for p in paths:
        key = Path(p).stem.casefold()  # a case-insensitive file system holds one of Talk.txt / talk.txt
        stems[key] = stems.get(key, 0) + 1
    return {p: Path(p).stem if stems[Path(p).stem.casefold()] == 1 else local_item_id(Path(p)) for p in paths}


def write_outputs(records: Sequence[Transcript], out_dir: str | Path, fmt: str = "txt") -> list[Path]:
    """``<name>.txt`` (the text) or ``<name>.srt`` (a cue per segment) per file, or one
    ``transcripts.jsonl`` (``Transcript.to_dict`` per line) in ``out_dir``; each written atomically."""
    from tasks.captions import Cue, write_srt

    check_output(out_dir, fmt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        return [
            write_text(
                out / JSONL_NAME, "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)
            )
        ]
    names = output_names([r.path for r in records])
    written = []
    for r in records:
        if fmt == "srt":
            written.append(
                write_srt(out / f"{names[r.path]}.srt", [Cue(s.start_s, s.end_s, s.text) for s in r.segments])
            )
        else:
            written.append(write_text(out / f"{names[r.path]}.txt", r.text + "\n"))
    return written


def stdout_text(records: Sequence[Transcript]) -> str:
    """What goes to stdout without --out: the text of a single file; ``path<TAB>text`` per line for
    several (whitespace in the text flattened to single spaces so each file is one line)."""
    if len(records) == 1:
        return records[0].text
    return "\n".join(f"{r.path}\t{' '.join(r.text.split())}" for r in records)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def summary(result: TranscribeResult) -> str:
    """One line for the terminal: what ran and its throughput."""
    rtfx = "n/a" if result.rtfx is None else f"{result.rtfx:.1f}"
    return (
        f"{result.system} ({STAGE_KINDS[result.stage]}, beam {result.num_beams}): "
        f"{_count(len(result.records), 'file')}, {_count(result.pieces, 'piece')}, {result.audio_s:.1f} s of "
        f"audio in {result.decode_s:.1f} s, RTFx {rtfx} (model loaded in {result.load_s:.1f} s)"
    )
