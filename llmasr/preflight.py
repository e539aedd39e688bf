"""Checks that run before any work, under every profile: sources, stage numbers, test sets and model
names (``flows.config.check_before_work`` picks those a run needs).

Each check raises ``ConfigError`` (or ``tasks.ingest.SourceError``) with one line naming the key or
file at fault and the fix; the CLI prints it as its one ``error:`` line and exits 2.

- A path that a profile generates (its espeak-ng corpus, ``demo.corpus_dir``; the demo's tiny
  models beside ``train.encoder``) is checked only once it exists: before that, the run makes it.
- Test sets: each must yield at least one scorable utterance (its audio found, its transcript
  present), read with ``tasks.testsets.load_test_set`` (no audio is decoded).
- Model names (``label.model``, ``train.encoder``/``llm``/``tokenizer``, ``eval.baselines``): a
  ``bundled:`` name must be known and its packages installed; a local path must exist; a hub name
  (or a faster-whisper size such as ``large-v3``) must be in the local Hugging Face cache, or else
  the hub must answer within ``HUB_TIMEOUT_S`` and know the repository.  ``HF_HUB_OFFLINE=1`` (or
  ``TRANSFORMERS_OFFLINE=1``) means the cache only.  Nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from llmasr.config import STAGES, ConfigError, PipelineConfig

log = logging.getLogger("llmasr.preflight")

HUB_TIMEOUT_S = 2.0
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TRUE = ("1", "true", "yes", "on")
# faster-whisper sizes that label slowly on a CPU (minutes per minute of audio)
_LARGE = re.compile(r"(^|[/-])(large|medium|turbo)", re.IGNORECASE)


# ------------------------------------------------------------------------------ generated paths


def _inside(path: str | Path, folder: str | Path) -> bool:
    try:
        Path(path).expanduser().resolve().relative_to(Path(folder).expanduser().resolve())
        return True
    except ValueError:
        return False


def generated_later(cfg: PipelineConfig, path: str | Path) -> bool:
    """True for a path that does not exist yet and that the profile's run generates: anything in
    its espeak-ng corpus (``demo.corpus_dir``).  Such a path is checked once it is generated."""
    return (
        cfg.demo is not None and not Path(path).expanduser().exists() and _inside(path, cfg.demo.corpus_dir)
    )


def _demo_models_dir(cfg: PipelineConfig) -> Path | None:
    """The folder whose tiny models the demo's training builds (flows/train.py), or None."""
    if cfg.demo is None or cfg.demo.kind != "demo":
        return None
    return Path(cfg.train.encoder).expanduser().parent


# ---------------------------------------------------------------------------------- sources


def check_sources(cfg: PipelineConfig) -> None:
    """Every source that exists or should exist now (``tasks.ingest.resolve_sources``: paths,
    URLs, the rows of manifests); the profile's own corpus is checked once generated."""
    from tasks.ingest import resolve_sources

    now = [s for s in cfg.sources if not generated_later(cfg, str(s).strip())]
    if now or cfg.demo is None:
        resolve_sources(now)


# --------------------------------------------------------------------------- training stages


def check_stage_numbers(stages: list[int]) -> None:
    """``--stages``: increasing stage numbers of ``STAGES``, each once."""
    if not stages or any(s not in STAGES for s in stages) or sorted(set(stages)) != stages:
        raise ConfigError(f"--stages must be increasing stage numbers from {STAGES}, got {stages}")


# -------------------------------------------------------------------------------- test sets


def check_test_sets(cfg: PipelineConfig) -> None:
    """No test set, names twice, a test set path that does not exist (one the profile generates is
    checked once generated), a malformed hypothesis file spec.  ``check_scorable`` then reads each
    set."""
    from tasks import evaluate as ev

    if not cfg.eval.test_sets:
        raise ConfigError("no test sets: pass --test-set name=path (or set eval.test_sets)")
    names = [ev.parse_named(s)[0] for s in cfg.eval.test_sets]
    if len(set(names)) != len(names):
        raise ConfigError(f"test set names must be distinct, got {names}")
    for spec in cfg.eval.test_sets:
        name, path = ev.parse_named(spec)
        if not Path(path).expanduser().exists() and not generated_later(cfg, path):
            raise ConfigError(
                f"eval.test_sets: test set {name}: {path} does not exist (fix the path with --test-set "
                "NAME=PATH or in pipeline_config.yaml)"
            )
    try:
        ev.hyp_specs(cfg.eval)
    except ev.EvalError as exc:
        raise ConfigError(str(exc)) from None


def scorable_problem(name: str, path: str) -> str | None:
    """Why test set ``name`` at ``path`` has nothing to score, or None when at least one utterance
    has its audio and a non-empty transcript."""
    from tasks.testsets import TestSetError, load_test_set

    try:
        utts, problems = load_test_set(path)
    except (FileNotFoundError, TestSetError, OSError) as exc:
        return f"eval.test_sets: test set {name}: {exc}"
    if any(u.text.strip() for u in utts):
        return None
    if utts:
        why = f"all {len(utts)} transcripts are empty"
    elif problems:
        more = f" (and {len(problems) - 1} more like it)" if len(problems) > 1 else ""
        why = f"{problems[0]}{more}"
    else:
        why = "it lists no utterances"
    return (
        f"eval.test_sets: test set {name} ({path}) has nothing to score: no utterance with both its audio "
        f"and a transcript; {why}. A test set is a manifest with audio and text columns, a folder of audio "
        "with same-name .txt files, a Primock57 folder of .TextGrid + .wav, or a Kincaid46 .tsv; fix it or "
        "pass another with --test-set NAME=PATH"
    )


def check_scorable(cfg: PipelineConfig, generated: bool = False) -> None:
    """Each test set of ``eval.test_sets`` yields a scorable utterance (those the profile has yet
    to generate are checked once they exist); ``generated``: only those the profile generates, once
    it has (the others were checked before)."""
    from tasks.evaluate import parse_named

    for spec in cfg.eval.test_sets:
        name, path = parse_named(spec)
        if generated_later(cfg, path):
            continue
        if generated and not (cfg.demo is not None and _inside(path, cfg.demo.corpus_dir)):
            continue
        problem = scorable_problem(name, path)
        if problem:
            raise ConfigError(problem)


# ----------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelRef:
    """One model name of the config: the key that sets it, the name, what loads it."""

    key: str  # e.g. "label.model", "eval.baselines"
    name: str  # the model part, e.g. "large-v3", "openai/whisper-large-v2", "bundled:tiny.en"
    loader: str  # "faster-whisper" (CTranslate2) or "transformers"
    role: str  # "whisper", "llm" or "tokenizer": which bundled names fit
    fix: str  # the option that replaces it, with {name} for the suggested name


_SUGGEST = {"whisper": "bundled:whisper-base", "llm": "bundled:smollm2-135m-instruct"}


def model_refs(
    cfg: PipelineConfig,
    label: bool = False,
    train_stages: Iterable[int] = (),
    baselines: bool = False,
    work_dir: Path | None = None,
) -> list[ModelRef]:
    """The model names a command will load: the labeller (``label``), the training's base models
    for ``train_stages`` (the encoder only where stage 1 runs or has no checkpoint yet), the
    evaluation's baselines.  The demo's tiny models, which its training builds, are left out."""
    refs: list[ModelRef] = []
    if label:
        refs.append(
            ModelRef("label.model", cfg.label.model, "faster-whisper", "whisper", "--set label.model={name}")
        )
    stages = set(train_stages)
    if stages:
        demo_dir = _demo_models_dir(cfg)
        wanted = []
        if 1 in stages or not _stage1_done(work_dir or cfg.work_dir):
            wanted.append(("train.encoder", cfg.train.encoder, "whisper"))
        if stages & {2, 3}:
            wanted.append(("train.llm", cfg.train.llm, "llm"))
            if cfg.train.tokenizer:
                wanted.append(("train.tokenizer", cfg.train.tokenizer, "tokenizer"))
        for key, name, role in wanted:
            if demo_dir is not None and not Path(name).expanduser().exists() and _inside(name, demo_dir):
                continue
            fix = (
                "--set train.tokenizer=null (the LLM's own tokenizer)"
                if role == "tokenizer"
                else f"--set {key}={{name}}"
            )
            refs.append(ModelRef(key, name, "transformers", role, fix))
    if baselines:
        for spec in cfg.eval.baselines:
            loader, _, name = spec.partition(":")
            refs.append(
                ModelRef("eval.baselines", name.strip(), loader, "whisper", f"--baseline {loader}:{{name}}")
            )
    return refs


def _stage1_done(work_dir: str | Path) -> bool:
    from tasks.checkpoints import read_stage, stage_dir  # imports torch: only asked when stage 1 does not run

    return read_stage(stage_dir(work_dir, 1)) is not None


def _offline() -> str | None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return None


def _in_hub_cache(repo: str, files: Iterable[str]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for f in files:
        try:
            if isinstance(try_to_load_from_cache(repo, f), str):
                return True
        except Exception:  # noqa: BLE001 - a name the cache API rejects is simply not cached
            return False
    return False


def hub_answer(repo: str, timeout_s: float = HUB_TIMEOUT_S, endpoint: str | None = None) -> str:
    """Ask the hub (``endpoint``, default ``HF_ENDPOINT``'s) about ``repo`` within ``timeout_s``
    (DNS included): "found", "missing" (the hub says no such repository), or "unreachable" (no
    answer in time, no connection)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    answer: list[str] = []

    def ask() -> None:
        try:
            HfApi(endpoint=endpoint).model_info(repo, timeout=timeout_s)
            answer.append("found")
        except GatedRepoError:
            answer.append("found")  # it exists; the download needs a token with access
        except RepositoryNotFoundError:
            answer.append("missing")
        except HfHubHTTPError:
            answer.append("found")  # the hub answered with another error: not this check's to judge
        except Exception:  # noqa: BLE001 - connection refused, DNS, TLS, proxy: no answer
            answer.append("unreachable")

    t = threading.Thread(target=ask, name="llmasr-hub-probe", daemon=True)  # a hung DNS lookup is left behind
    t.start()
    t.join(timeout_s + 0.5)
    return answer[0] if answer else "unreachable"


def _bundled_problem(ref: ModelRef) -> str | None:
    from llmasr.bundled import MODELS, BundledModelError, known_names, locate, lookup

    try:
        model = lookup(ref.name)
    except BundledModelError:
        fitting = [
            n for n in known_names() if ref.role == "tokenizer" or MODELS[n.split(":", 1)[1]].kind == ref.role
        ]
        return (
            f"{ref.key}: unknown bundled model {ref.name!r}; the bundled {ref.role} models are "
            f"{', '.join(fitting)}"
        )
    if ref.role != "tokenizer" and model.kind != ref.role:
        fitting = [n for n in known_names() if MODELS[n.split(":", 1)[1]].kind == ref.role]
        return (
            f"{ref.key}: {ref.name} is a bundled {model.kind} model, not a {ref.role} model; use "
            f"{' or '.join(fitting)}"
        )
    try:
        locate(model, verify=False)  # the packages are installed and their files have the pinned sizes
    except BundledModelError as exc:
        return f"{ref.key}: {exc}"
    return None


def _faster_whisper_repo(name: str) -> str | None:
    try:
        from faster_whisper.utils import _MODELS
    except ImportError:
        return None
    return _MODELS.get(name)


def model_problem(ref: ModelRef, hub: Callable[[str], str] = hub_answer) -> str | None:
    """Why ``ref`` cannot be loaded here (one line: the key, the model, the fix), or None."""
    from llmasr.bundled import is_bundled

    name = ref.name
    suggest = ref.fix.format(name=_SUGGEST.get(ref.role, ""))
    if not name:
        return f"{ref.key}: empty model name; e.g. {suggest}"
    if is_bundled(name):
        return _bundled_problem(ref)
    path = Path(name).expanduser()
    if path.exists():
        return None
    size_repo = _faster_whisper_repo(name) if ref.loader == "faster-whisper" else None
    is_hub = size_repo is not None or (
        _HUB_NAME.match(name) is not None and not name.startswith((".", "/", "~"))
    )
    if not is_hub:
        if ref.loader == "faster-whisper" and "/" not in name and os.sep not in name:
            from faster_whisper.utils import available_models

            return (
                f"{ref.key}: {name!r} is neither a faster-whisper size ({', '.join(available_models())}), a "
                f"folder nor a hub name; e.g. {suggest}"
            )
        return (
            f"{ref.key}: no such folder {path}; fix the path, or use a model that ships with llmasr: "
            f"{suggest}"
        )
    repo = size_repo or name
    shown = f"{name} (hub {repo})" if size_repo else name
    files = (
        ("model.bin",)
        if ref.loader == "faster-whisper"
        else ("config.json", "tokenizer_config.json", "tokenizer.json")
    )
    if _in_hub_cache(repo, files):
        return None
    offline_var = _offline()
    if offline_var:
        why = f"is not in the local Hugging Face cache and {offline_var}=1 forbids downloading it"
    else:
        answer = hub(repo)
        if answer == "found":
            return None
        if answer == "missing":
            return (
                f"{ref.key}: {shown} does not exist on the Hugging Face hub (mistyped? private repositories "
                f"need HF_TOKEN); e.g. {suggest}"
            )
        from huggingface_hub import constants

        why = f"is not in the local Hugging Face cache and the hub ({constants.ENDPOINT}) cannot be reached"
    return (
        f"{ref.key}: model {shown} {why}; download it once online, or use a model that ships with llmasr "
        f"(offline): {suggest}"
    )


def check_models(refs: Iterable[ModelRef], hub: Callable[[str], str] = hub_answer) -> None:
    """Raise ConfigError naming every model of ``refs`` that cannot be loaded here (one line)."""
    problems: list[str] = []
    answers: dict[str, str] = {}

    def cached_hub(repo: str) -> str:  # one probe per repository and command
        if repo not in answers:
            answers[repo] = hub(repo)
        return answers[repo]

    for ref in refs:
        problem = model_problem(ref, cached_hub)
        if problem and problem not in problems:
            problems.append(problem)
    if problems:
        raise ConfigError("; ".join(problems))


def label_device_warning(cfg: PipelineConfig) -> str | None:
    """A warning when ``label.device: auto`` will put a large labeller on this machine's CPU."""
    if cfg.label.device != "auto" or cfg.runner.kind != "local" or not _LARGE.search(cfg.label.model):
        return None
    try:
        import ctranslate2

        if ctranslate2.get_cuda_device_count() > 0:
            return None
    except Exception:  # noqa: BLE001 - no CTranslate2 CUDA support: the CPU it is
        pass
    return (
        f"label.device=auto: this machine has no CUDA device, so label.model={cfg.label.model} labels on the "
        "CPU, hours per hour of audio; on a CPU use --set label.model=bundled:whisper-base (or "
        "bundled:tiny.en), or run on a GPU machine (label.device=cuda)"
    )
