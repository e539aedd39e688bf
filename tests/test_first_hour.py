"""A new user's first hour (issue 16): what fails, fails before any work with one ``error:`` line.

Every command runs the installed ``llmasr`` entry point from a folder outside the repository, with
its own PREFECT_HOME, and must exit 2 with exactly one ``error:`` line and no traceback, before any
Prefect server, corpus or work dir exists: test sets with nothing to score, missing sources under
``--profile demo``, model names that cannot be loaded offline, manifest rows whose audio never
existed.  Then the ends of a run: the model-name checks against a real hub client, the label RTFx
cell of a cached rerun, and the line that says where runs stay browsable.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

LLMASR = Path(sys.executable).parent / "llmasr"
TEXTGRID = """File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 2
tiers? <exists>
size = 1
item []:
    item [1]:
        class = "IntervalTier"
        name = "doctor"
        xmin = 0
        xmax = 2
        intervals: size = 1
        intervals [1]:
            xmin = 0
            xmax = 2
            text = "the patient has tachycardia"
"""


def llmasr(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The ``llmasr`` command in ``cwd`` with a PREFECT_HOME of its own and no Prefect server given."""
    full = {
        **os.environ,
        "PREFECT_HOME": str(cwd / ".prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    full.pop("PREFECT_API_URL", None)
    return subprocess.run(
        [str(LLMASR), *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=600
    )


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a command that failed before any work (exit 2, no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def wav(path: Path, seconds: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(str(path), (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    return path


def scorable_set(folder: Path) -> Path:
    """A folder test set with one utterance: audio + its .txt transcript."""
    wav(folder / "clip.wav")
    (folder / "clip.txt").write_text("the patient has tachycardia\n", encoding="utf-8")
    return folder


# --- test sets with nothing to score ------------------------------------------------------------


def test_evaluate_a_primock57_folder_without_its_wavs_fails_before_any_work(tmp_path: Path):
    (tmp_path / "primock").mkdir()
    (tmp_path / "primock" / "day1_consultation01_doctor.TextGrid").write_text(TEXTGRID, encoding="utf-8")
    work = tmp_path / "work"
    proc = llmasr(
        tmp_path, "evaluate", "--profile", "demo", "--work-dir", str(work), "--test-set", "primock57=primock"
    )
    line = error_line(proc)
    assert "test set primock57" in line and "nothing to score" in line
    assert (
        "day1_consultation01_doctor.TextGrid: audio not found" in line
        and "day1_consultation01_doctor.wav" in line
    )
    assert not work.exists()  # no demo corpus, no eval/ folder
    assert "Starting temporary server" not in proc.stderr


def test_evaluate_a_manifest_without_a_text_column_fails_before_any_work(tmp_path: Path):
    wav(tmp_path / "a.wav")
    (tmp_path / "set.jsonl").write_text(
        json.dumps({"audio": "a.wav", "words": "no text column"}) + "\n", encoding="utf-8"
    )
    work = tmp_path / "work"
    proc = llmasr(
        tmp_path,
        "evaluate",
        "--work-dir",
        str(work),
        "--test-set",
        "mine=set.jsonl",
        "--baseline",
        "faster-whisper:bundled:tiny.en",
    )
    line = error_line(proc)
    assert (
        "test set mine" in line
        and "nothing to score" in line
        and "no transcript (expected a column text/transcript)" in line
    )
    assert not work.exists()


def test_run_checks_that_each_test_set_can_be_scored_before_labelling_or_training(tmp_path: Path):
    wav(tmp_path / "audio" / "talk.wav")
    scorable_set(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    wav(tmp_path / "empty" / "clip.wav")  # its transcript is missing
    work = tmp_path / "work"
    proc = llmasr(tmp_path, "run", "--work-dir", str(work), "--source", "audio",
                  "--test-set", "good=good", "--test-set", "empty=empty",
                  "--set", "label.model=bundled:tiny.en")  # fmt: skip
    line = error_line(proc)
    assert "test set empty" in line and "clip.wav: no transcript (clip.txt not found beside it)" in line
    assert "test set good" not in line
    assert not work.exists()


# --- --profile demo runs the same early checks ---------------------------------------------------


def test_demo_profile_fails_on_a_missing_source_before_the_corpus_or_a_server(tmp_path: Path):
    work = tmp_path / "work"
    proc = llmasr(tmp_path, "data", "--profile", "demo", "--work-dir", str(work), "--source", "/nonexistent")
    line = error_line(proc)
    assert "bad --source" in line and "'/nonexistent': no such file or folder" in line
    assert not work.exists() and "Starting temporary server" not in proc.stderr


def test_demo_profile_fails_on_a_missing_test_set_before_the_corpus_or_a_server(tmp_path: Path):
    work = tmp_path / "work"
    proc = llmasr(
        tmp_path, "evaluate", "--profile", "demo", "--work-dir", str(work), "--test-set", "x=missing.jsonl"
    )
    line = error_line(proc)
    assert f"test set x: {tmp_path / 'missing.jsonl'} does not exist" in line
    assert not work.exists() and "Starting temporary server" not in proc.stderr


# --- model names ----------------------------------------------------------------------------------


def _cpu_only() -> bool:
    import ctranslate2

    return ctranslate2.get_cuda_device_count() == 0


def test_the_default_labeller_offline_names_its_key_and_a_bundled_model(tmp_path: Path):
    wav(tmp_path / "audio" / "talk.wav")
    work = tmp_path / "work"
    proc = llmasr(
        tmp_path,
        "data",
        "--work-dir",
        str(work),
        "--source",
        "audio",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
    )
    line = error_line(proc)
    assert (
        "label.model: model large-v3 (hub Systran/faster-whisper-large-v3) is not in the local Hugging Face "
        "cache" in line
    )
    assert "HF_HUB_OFFLINE=1" in line and "--set label.model=bundled:whisper-base" in line
    if _cpu_only():  # label.device=auto with large-v3 on this machine's CPU: said before the error
        assert "warning: label.device=auto" in proc.stderr and "labels on the CPU" in proc.stderr
    assert not work.exists()


def test_every_model_that_cannot_load_is_named_in_one_error_line(tmp_path: Path):
    wav(tmp_path / "audio" / "talk.wav")
    scorable_set(tmp_path / "set")
    with socket.socket() as s:  # a port nothing listens on: the hub cannot be reached
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    work = tmp_path / "work"
    proc = llmasr(
        tmp_path, "run", "--work-dir", str(work), "--source", "audio", "--test-set", "set=set",
        "--set", "label.model=large-v4", "--set", "train.encoder=./nowhere",
        "--set", "train.llm=bundled:tiny.en",
        "--baseline", "transformers:openai/whisper-tiny",
        HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{closed}",
    )  # fmt: skip
    line = error_line(proc)
    assert "label.model: 'large-v4' is neither a faster-whisper size (tiny.en, " in line
    assert (
        f"train.encoder: no such folder {tmp_path / 'nowhere'}" in line
        and "--set train.encoder=bundled:whisper-base" in line
    )
    assert (
        "train.llm: bundled:tiny.en is a bundled whisper model, not a llm model; use "
        "bundled:smollm2-135m-instruct" in line
    )
    assert (
        "eval.baselines: model openai/whisper-tiny is not in the local Hugging Face cache and the hub "
        f"(http://127.0.0.1:{closed}) cannot be reached" in line
    )
    assert "--baseline transformers:bundled:whisper-base" in line
    assert not work.exists()


class _Hub(http.server.BaseHTTPRequestHandler):
    """The hub's model API at the narrowest seam: org/known exists, nothing else does."""

    def do_GET(self):  # noqa: N802 - http.server's name
        known = self.path.startswith("/api/models/org/known")
        body = json.dumps(
            {"id": "org/known", "sha": "0" * 40, "siblings": []}
            if known
            else {"error": "Repository not found"}
        ).encode()
        self.send_response(200 if known else 404)
        if not known:
            self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_hub_name_is_asked_of_the_hub_when_it_is_not_cached(hub_url: str, tmp_path: Path, monkeypatch):
    from huggingface_hub import constants

    from llmasr import preflight

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    hub = functools.partial(preflight.hub_answer, endpoint=hub_url)
    ref = preflight.ModelRef(
        "train.encoder", "org/known", "transformers", "whisper", "--set train.encoder={name}"
    )
    assert preflight.model_problem(ref, hub) is None
    typo = preflight.ModelRef(
        "train.encoder", "org/knwon", "transformers", "whisper", "--set train.encoder={name}"
    )
    assert preflight.model_problem(typo, hub) == (
        "train.encoder: org/knwon does not exist on the Hugging Face hub (mistyped? private repositories "
        "need HF_TOKEN); e.g. --set train.encoder=bundled:whisper-base"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert preflight.hub_answer("org/known", endpoint=closed) == "unreachable"


def test_a_hub_model_in_the_local_cache_passes_offline(tmp_path: Path, monkeypatch):
    from huggingface_hub import constants

    from llmasr import preflight

    # the Hugging Face cache's layout, as a download leaves it: refs/main names the snapshot
    repo = tmp_path / "hub" / "models--Systran--faster-whisper-small"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("a" * 40) / "model.bin").write_bytes(b"weights")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_hub(repo: str) -> str:
        raise AssertionError(f"the hub was asked about {repo} offline")

    ref = preflight.ModelRef("label.model", "small", "faster-whisper", "whisper", "--set label.model={name}")
    assert preflight.model_problem(ref, no_hub) is None
    other = preflight.ModelRef(
        "label.model", "medium", "faster-whisper", "whisper", "--set label.model={name}"
    )
    assert "not in the local Hugging Face cache and HF_HUB_OFFLINE=1" in preflight.model_problem(
        other, no_hub
    )


def test_bundled_names_and_the_demo_models_the_training_builds(tmp_path: Path):
    from llmasr import preflight
    from llmasr.config import ConfigError, load_config

    cfg = load_config("demo", work_dir=str(tmp_path / "work"))
    refs = preflight.model_refs(cfg, label=True, train_stages=[1, 2, 3], baselines=True)
    # the tiny models under <work_dir>/demo-models do not exist yet: the demo's training builds them
    assert [(r.key, r.name) for r in refs] == [
        ("label.model", "bundled:tiny.en"),
        ("eval.baselines", "bundled:tiny.en"),
    ]
    preflight.check_models(refs)
    cfg = load_config("demo", ["label.model=bundled:tiny-en"], work_dir=str(tmp_path / "work"))
    with pytest.raises(
        ConfigError,
        match=(
            "label.model: unknown bundled model 'bundled:tiny-en'; the bundled whisper models are "
            "bundled:whisper-base, bundled:tiny.en"
        ),
    ):
        preflight.check_models(preflight.model_refs(cfg, label=True))


def test_a_large_labeller_on_auto_warns_only_where_it_would_run_on_the_cpu():
    from llmasr import preflight
    from llmasr.config import load_config

    big = load_config(None, ["label.device=auto", "label.model=large-v3"])
    assert (preflight.label_device_warning(big) is not None) == _cpu_only()
    # asked for
    assert (
        preflight.label_device_warning(load_config(None, ["label.device=cpu", "label.model=large-v3"]))
        is None
    )
    assert (
        preflight.label_device_warning(
            load_config(None, ["label.device=auto", "label.model=bundled:whisper-base"])
        )
        is None
    )


# --- manifests -----------------------------------------------------------------------------------


def test_a_manifest_row_whose_audio_never_existed_fails_before_any_work(tmp_path: Path):
    wav(tmp_path / "clips" / "one.wav")
    # what a spreadsheet saves: a byte-order mark before the header
    (tmp_path / "list.csv").write_bytes(
        "audio,captions\nclips/one.wav,\nclips/two.wav,\n".encode("utf-8-sig")
    )
    work = tmp_path / "work"
    proc = llmasr(
        tmp_path,
        "data",
        "--work-dir",
        str(work),
        "--source",
        "list.csv",
        "--set",
        "label.model=bundled:tiny.en",
    )
    line = error_line(proc)
    assert f"list.csv: row 2: audio file {tmp_path / 'clips' / 'two.wav'} does not exist" in line
    assert "no 'audio'" not in line and "one.wav" not in line  # the header was read through the BOM
    assert not work.exists()


# --- the ends of a run ----------------------------------------------------------------------------


def test_a_cached_rerun_reports_cached_not_a_label_rtfx_of_zero():
    from cli.data import label_rtfx_cell
    from flows.data import DataRunResult

    first = DataRunResult(
        "w", items=3, failed_items=0, segments=9, kept=7, shards=1, labelled_items=3, label_rtfx=12.345
    )
    assert label_rtfx_cell(first) == "12.3"
    rerun = DataRunResult(
        "w", items=3, failed_items=0, segments=9, kept=7, shards=1, labelled_items=0, label_rtfx=0.0
    )
    assert label_rtfx_cell(rerun) == "cached"
    nothing = DataRunResult(
        "w", items=1, failed_items=1, segments=0, kept=0, shards=0, labelled_items=0, label_rtfx=0.0
    )
    assert label_rtfx_cell(nothing) == "-"


def test_evaluate_from_another_folder_ends_by_saying_where_to_browse_runs(tmp_path: Path):
    scorable_set(tmp_path / "set")
    (tmp_path / "hyps.jsonl").write_text(
        json.dumps({"utt_id": "clip", "text": "the patient has tachycardia"}) + "\n", encoding="utf-8"
    )
    work = tmp_path / "work"
    proc = llmasr(
        tmp_path,
        "evaluate",
        "--work-dir",
        "work",
        "--test-set",
        "set=set",
        "--hyps",
        "mine=hyps.jsonl",
        "--set",
        "eval.common_words=0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "eval" / "metrics.json").is_file()
    lines = proc.stderr.splitlines()
    hint = [i for i, ln in enumerate(lines) if ln.startswith("browse this run")]
    assert len(hint) == 1, proc.stderr[-3000:]
    assert f"llmasr ui --work-dir {work}" in lines[hint[0]] and "http://127.0.0.1:4200" in lines[hint[0]]
    # after the table, at the end
    assert hint[0] > max(i for i, ln in enumerate(lines) if "evaluation:" in ln)


def test_train_with_no_stage_fails_before_any_work(tmp_path: Path):
    work = tmp_path / "work"
    proc = llmasr(tmp_path, "train", "--work-dir", str(work), "--stages", ",")
    assert "--stages must be increasing stage numbers from (1, 2, 3), got []" in error_line(proc)
    assert not work.exists()
