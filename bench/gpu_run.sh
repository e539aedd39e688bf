#!/usr/bin/env bash
# bench/gpu_run.sh -- the GPU benches in ONE device call (about 8 minutes; see bench/README.md).
#
# BEFORE (here, on the CPU machine; ~1 min, needs PyPI):
#     bash bench/gpu_prepare.sh        # .whl/ (py3.12 wheels) + .gpu_assets/tokenizer.json, size check
#
# THE DEVICE CALL (the device tool's `run`; kind left out):
#     command:   bash bench/gpu_run.sh          (or GPU_RUN_BENCHES="train_0.5b train_1.5b" bash bench/gpu_run.sh)
#     carry:     [".whl", ".gpu_assets"]
#     timeout_s: 600
#   The script keeps itself under GPU_RUN_BUDGET_S (480 s) of bench time.  Measured 2026-11-26 on an
#   H200 (two calls, 15 device minutes in all): the machine's start ~30 s, install + preflight 25 s,
#   train_0.5b 101 s, train_1.5b 119 s, decode_0.5b_merged 67 s, decode_0.5b_unmerged 50 s;
#   decode_0.5b (four configurations, two reps) does NOT fit its 210 s (the batch-1 configurations
#   cost ~4 s per generate call).  Two calls of ~5 min fit the 15 minutes; give the machine back
#   (give_back) after each call unless you rerun at once.
#
# AFTER (here): the files come back under the reply's files_at:
#     gpu_run.log                   this script's whole output: nvidia-smi, versions, preflight, summary
#     <bench>.log                   one per bench run
#     gpu_train_bench.json          train_0.5b (qwen2-0.5b, TRAIN_STEPS=200)
#     gpu_train_bench_1.5b.json     train_1.5b (qwen2-1.5b, TRAIN2_STEPS=100)
#     gpu_train_bench_shapes.json   train_0.5b_shapes
#     gpu_decode_bench*.json        decode_0.5b / _merged / _unmerged / _nocudnn (each generate call timed)
#     <name>.train.jsonl            the trainer's metrics, only when a train bench left no JSON
#   cp FILES_AT/gpu_*bench*.json bench/results/
#   .venv/bin/python bench/capacity.py --from-gpu-bench bench/results/gpu_train_bench_1.5b.json
#   then update the numbers in bench/README.md / README.md (GPU, torch/CUDA versions, samples/s,
#   audio-s/s, MFU, peak memory; decode RTF and tokens/s per configuration) and commit.
#
# What it does: installs the carried wheels into $SITE_DIR (pip --no-index --no-deps --target),
# PYTHONPATH=$SITE_DIR:$PWD, LLMASR_TOKENIZER_JSON=.gpu_assets/tokenizer.json; prints nvidia-smi and
# versions; a preflight imports everything the benches import after their CUDA check and builds the
# tokenizer, a synthetic train batch and the decode bench's audio pieces on the CPU (so a missing
# module shows in seconds); then each bench of $GPU_RUN_BENCHES in order, under its own `timeout`
# (its cap, or what is left of the budget; skipped below its minimum), logs tee'd to $OUT.
# Exit: 0 all benches wrote their JSON; 2 no CUDA GPU (each bench said "needs a CUDA GPU": the
# dry run off the GPU machine); 1 otherwise.
#
# Dry run on a CPU machine (proves install, imports and paths short of the GPU):
#   PYVER=3.11 OUTDIR=/tmp/whl311 bash bench/gpu_prepare.sh
#   GPU_RUN_PYTHON=/tmp/venv/bin/python WHL_DIR=/tmp/whl311 SITE_DIR=/tmp/site311 OUT=/tmp/gpuout bash bench/gpu_run.sh
#
# Env: GPU_RUN_PYTHON (python3), WHL_DIR (.whl), ASSETS_DIR (.gpu_assets), SITE_DIR (/tmp/site),
# OUT (set by the device tool; else /tmp/gpuout), GPU_RUN_BUDGET_S (480), GPU_RUN_SECOND_LLM (1: run
# the 1.5b train bench when time allows; 0: never), TRAIN_STEPS (200), TRAIN2_STEPS (100),
# GPU_RUN_BENCHES (in order; default "train_0.5b_shapes train_0.5b_shapes_cudnn decode_0.5b_merged
# decode_0.5b_nocudnn train_1.5b_paper_batch": the open questions after the 2026-11-26 H200 run, see
# bench/README.md).  All entries: train_0.5b, train_1.5b,
# decode_0.5b (the four configurations), decode_0.5b_unmerged / decode_0.5b_merged (batched configurations,
# LoRA unmerged / merged, 32 pieces, 1 rep), decode_0.5b_nocudnn (merged, cuDNN attention off),
# train_0.5b_shapes (a new batch shape every step; the pipeline's train.cudnn_attention false),
# train_0.5b_shapes_cudnn (the same with cuDNN attention allowed), train_1.5b_paper_batch (32 x ~12 s: the pipeline's
# train.batch_max_audio_s 400 per micro-batch, 3x the other train benches').
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${GPU_RUN_PYTHON:-python3}
WHL_DIR=${WHL_DIR:-.whl}
ASSETS_DIR=${ASSETS_DIR:-.gpu_assets}
SITE_DIR=${SITE_DIR:-/tmp/site}
OUT=${OUT:-/tmp/gpuout}
BUDGET=${GPU_RUN_BUDGET_S:-480}
SECOND_LLM=${GPU_RUN_SECOND_LLM:-1}
TRAIN_STEPS=${TRAIN_STEPS:-200}
TRAIN2_STEPS=${TRAIN2_STEPS:-100}
WORK=${GPU_RUN_WORK:-/tmp/gpubench}
BENCHES=${GPU_RUN_BENCHES:-train_0.5b_shapes train_0.5b_shapes_cudnn decode_0.5b_merged decode_0.5b_nocudnn train_1.5b_paper_batch}
export OUT
mkdir -p "$OUT" "$WORK"
DEADLINE=$((SECONDS + BUDGET))
RESULTS=()
NO_CUDA=0
FAILED=0

say() { printf '\n==== [%4ds] %s\n' "$SECONDS" "$*"; }

run_bench() {  # NAME CAP_S MIN_S JSON WORKDIR CMD...: one bench under timeout, log tee'd to $OUT/NAME.log
  local name=$1 cap=$2 min=$3 json=$4 workdir=$5
  shift 5
  local t=$((DEADLINE - SECONDS - 5))
  ((t > cap)) && t=$cap
  if ((t < min)); then
    say "$name: SKIPPED (${t} s left of the budget, needs >= ${min} s)"
    RESULTS+=("$name: skipped, out of time")
    return
  fi
  say "$name (timeout ${t} s): $*"
  rm -f "$json"
  [[ -n $workdir ]] && rm -rf "$workdir"  # a trainer resumes from checkpoints it finds there (a rerun on a warm machine)
  local t0=$SECONDS
  timeout -k 15 "$t" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]} took=$((SECONDS - t0)) what
  if ((rc == 0)) && [[ -s $json ]]; then
    what="OK, wrote $(basename "$json")"
  elif ((rc == 2)) && grep -q "needs a CUDA GPU" "$OUT/$name.log"; then
    what="exit 2: needs a CUDA GPU (expected only off the GPU machine)"
    NO_CUDA=$((NO_CUDA + 1))
  elif ((rc == 124 || rc == 137)); then
    what="TIMED OUT after ${t} s (exit $rc)"
    FAILED=$((FAILED + 1))
  else
    what="FAILED, exit $rc$([[ $rc == 0 ]] && echo ", but no $json")"
    FAILED=$((FAILED + 1))
  fi
  if [[ ! -s $json && -n $workdir && -s $workdir/logs/train.jsonl ]]; then  # partial numbers of a train bench
    cp "$workdir/logs/train.jsonl" "$OUT/$name.train.jsonl" && what+="; its metrics so far in $name.train.jsonl"
  fi
  say "$name: $what (${took} s)"
  RESULTS+=("$name: $what (${took} s)")
}

main() {
  say "gpu_run.sh on $(hostname) $(date -u +%FT%TZ); budget ${BUDGET} s; python: $PY; OUT=$OUT"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  else
    echo "nvidia-smi: not found (not the GPU machine?)"
  fi
  nproc; free -g 2>/dev/null | head -2

  say "install carried packages: $WHL_DIR -> $SITE_DIR"
  shopt -s nullglob
  local pkgs=("$WHL_DIR"/*.whl "$WHL_DIR"/*.tar.gz)
  shopt -u nullglob
  if ((${#pkgs[@]} == 0)); then
    echo "FAIL: nothing in $WHL_DIR (run bench/gpu_prepare.sh here and name .whl in carry)"
    return 1
  fi
  printf '  %s\n' "${pkgs[@]##*/}"
  # sdists (none by default: gpu_prepare.sh builds deepspeed into a pure wheel) build without ops
  DS_BUILD_OPS=0 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --no-build-isolation \
    --disable-pip-version-check --upgrade --target "$SITE_DIR" "${pkgs[@]}" || { echo "FAIL: pip install"; return 1; }
  [[ -f $ASSETS_DIR/tokenizer.json ]] || { echo "FAIL: no $ASSETS_DIR/tokenizer.json (run bench/gpu_prepare.sh, carry .gpu_assets)"; return 1; }
  export PYTHONPATH="$SITE_DIR:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  export LLMASR_TOKENIZER_JSON="$PWD/$ASSETS_DIR/tokenizer.json"
  export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
  export TORCH_EXTENSIONS_DIR="$WORK/torch-extensions"

  # The decode bench speaks with espeak-ng when it is on PATH: 22.05 kHz wavs, which tasks.decode reads
  # through faster-whisper (not carried).  Random weights make speech and noise the same work, so its
  # noise pieces (16 kHz, read by soundfile) are used: espeak-ng is hidden from it where present.
  local hide_espeak=0
  if command -v espeak-ng >/dev/null; then
    hide_espeak=1
    echo "espeak-ng found at $(command -v espeak-ng): hidden from the decode bench (noise pieces)"
  fi

  say "versions + preflight (imports, tokenizer, a synthetic batch, decode audio pieces; CPU only)"
  HIDE_ESPEAK=$hide_espeak timeout 180 "$PY" - <<'EOF'
import importlib, importlib.util, os, shutil, sys, tempfile, time, traceback
from pathlib import Path

t0 = time.perf_counter()
fails = []

def check(what, fn):
    try:
        r = fn()
        print(f"  ok    {what}" + (f": {r}" if r is not None else ""), flush=True)
        return r
    except BaseException as exc:  # noqa: BLE001
        fails.append(what)
        print(f"  FAIL  {what}: {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc(limit=6)

def load_bench(name):
    spec = importlib.util.spec_from_file_location(name, f"bench/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

print(f"python {sys.version.split()[0]} at {sys.executable}")
for name in ("torch", "transformers", "tokenizers", "peft", "accelerate", "safetensors", "numpy", "pyarrow", "deepspeed",
             "pydantic", "pydantic_core", "webdataset", "soundfile", "jiwer", "rapidfuzz", "yaml", "typing_extensions", "triton"):
    def ver(name=name):
        m = importlib.import_module(name)
        return f"{getattr(m, '__version__', '?')}  ({Path(m.__file__).parent})"
    if name == "triton":  # not imported by the benches; torch on the GPU machine brings it
        try:
            print(f"  info  import triton: {ver()}")
        except ImportError as exc:
            print(f"  info  import triton: {exc}")
        continue
    check(f"import {name}", ver)
import torch
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {cuda}")
if cuda:
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, capability {p.major}.{p.minor}, "
          f"bf16 {torch.cuda.is_bf16_supported()}")
check("soundfile libsndfile", lambda: importlib.import_module("soundfile").__libsndfile_version__)

# everything the benches import after their CUDA check
check("bench/gpu_train_bench.py module", lambda: load_bench("gpu_train_bench") and None)
check("bench/gpu_decode_bench.py module", lambda: load_bench("gpu_decode_bench") and None)
for mod in ("llmasr.config", "llmasr.model", "llmasr.tiny_models", "llmasr.layout", "llmasr.atomic", "llmasr.text", "tasks.train",
            "tasks.train_data", "tasks.checkpoints", "tasks.demo_corpus", "tasks.decode", "tasks.testsets"):
    check(f"import {mod}", lambda mod=mod: importlib.import_module(mod) and None)
check("deepspeed runtime imports", lambda: (importlib.import_module("deepspeed.runtime.zero.stage_1_and_2"),
                                           importlib.import_module("deepspeed.utils").safe_get_full_fp32_param) and None)
check("webdataset + braceexpand", lambda: importlib.import_module("webdataset") and importlib.import_module("braceexpand") and None)
def accel():
    from deepspeed.accelerator import get_accelerator
    name = get_accelerator()._name
    if cuda and name != "cuda":
        raise RuntimeError(f"deepspeed picked accelerator {name!r}, not 'cuda'")
    return name
check("deepspeed accelerator", accel)
def peak():
    from tasks.train import peak_bf16_flops
    if not cuda:
        return "no GPU"
    v = peak_bf16_flops(torch.cuda.get_device_name(0))
    return f"{v:.3g} FLOP/s" if v else "UNKNOWN GPU NAME: the train bench reports no MFU"
check("peak bf16 FLOP/s of this GPU (MFU denominator)", peak)
def ds_config():
    if not Path("infra/deepspeed/zero2.json").is_file():
        raise FileNotFoundError("infra/deepspeed/zero2.json (the train bench's --deepspeed-config)")
check("infra/deepspeed/zero2.json", ds_config)

tmp = Path(tempfile.mkdtemp(prefix="gpu-preflight-"))
def tokenizer():
    from llmasr.model import build_tokenizer
    from llmasr.tiny_models import shipped_tokenizer_file, tiny_tokenizer
    global tok
    src = shipped_tokenizer_file()
    tok = build_tokenizer(tiny_tokenizer(tmp / "tokenizer", vocab_size=None))
    return f"{len(tok)} tokens from {src}"
check("tiny_tokenizer (the benches' tokenizer)", tokenizer)
def batch():
    b = next(iter(load_bench("gpu_train_bench").SyntheticBatches(tok, 2, 2.0, n_distinct=1, n_mels=80)))
    return ", ".join(f"{k}{tuple(v.shape) if hasattr(v, 'shape') else ''}" for k, v in b.items())
check("gpu_train_bench.SyntheticBatches (a batch)", batch)
def pieces():
    if os.environ.get("HIDE_ESPEAK") == "1":
        _which = shutil.which
        shutil.which = lambda c, *a, **k: None if c == "espeak-ng" else _which(c, *a, **k)
    from llmasr.config import SegmentConfig
    from tasks.decode import log_mel, plan_pieces, read_audio
    source, utts = load_bench("gpu_decode_bench").make_audio(3, tmp)
    problems = []
    kept, ps, durations = plan_pieces(utts, 30.0, SegmentConfig(), problems)
    if problems or not ps:
        raise RuntimeError(f"problems: {problems}")
    feats = log_mel(read_audio(ps[0].audio_path, ps[0].start_s, ps[0].end_s), 128)
    return f"{source}: {len(ps)} pieces, {sum(durations.values()):.1f} s; log-mel {tuple(feats.shape)}"
check("gpu_decode_bench.make_audio + plan_pieces + read_audio + log_mel", pieces)
shutil.rmtree(tmp, ignore_errors=True)
print(f"preflight: {len(fails)} failed{': ' + ', '.join(fails) if fails else ''} ({time.perf_counter() - t0:.0f} s)")
sys.exit(1 if fails else 0)
EOF
  local pre=$?
  if ((pre != 0)); then
    RESULTS+=("preflight: FAILED (exit $pre) -- the benches run anyway, their logs show the rest")
    FAILED=$((FAILED + 1))
  else
    RESULTS+=("preflight: OK")
  fi

  local decode=("$PY" bench/gpu_decode_bench.py)
  if ((hide_espeak)); then
    decode=("$PY" -c 'import runpy, shutil, sys
w = shutil.which
shutil.which = lambda c, *a, **k: None if c == "espeak-ng" else w(c, *a, **k)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")' bench/gpu_decode_bench.py)
  fi
  local b
  for b in $BENCHES; do
    case $b in
      train_0.5b)
        run_bench train_0.5b 240 60 "$OUT/gpu_train_bench.json" "$WORK/train-0.5b" \
          "$PY" bench/gpu_train_bench.py --llm 0.5b --steps "$TRAIN_STEPS" --work "$WORK/train-0.5b" --out "$OUT/gpu_train_bench.json" ;;
      train_1.5b)
        ((SECOND_LLM)) || continue
        run_bench train_1.5b 240 150 "$OUT/gpu_train_bench_1.5b.json" "$WORK/train-1.5b" \
          "$PY" bench/gpu_train_bench.py --llm 1.5b --steps "$TRAIN2_STEPS" --work "$WORK/train-1.5b" --out "$OUT/gpu_train_bench_1.5b.json" ;;
      decode_0.5b)  # the four configurations of bench/decode_bench.py, LoRA unmerged
        run_bench decode_0.5b 210 60 "$OUT/gpu_decode_bench.json" "" "${decode[@]}" --llm qwen2-0.5b --out "$OUT/gpu_decode_bench.json" ;;
      decode_0.5b_unmerged)  # batched configurations only, LoRA unmerged (as tasks.decode loads stage 3 before merge)
        run_bench decode_0.5b_unmerged 150 60 "$OUT/gpu_decode_bench_unmerged.json" "" "${decode[@]}" --llm qwen2-0.5b \
          --utts 32 --reps 1 --configs "greedy batch8,greedy batch32" --out "$OUT/gpu_decode_bench_unmerged.json" ;;
      decode_0.5b_merged)  # the same with the LoRA folded into the weights
        run_bench decode_0.5b_merged 150 60 "$OUT/gpu_decode_bench_merged.json" "" "${decode[@]}" --llm qwen2-0.5b --merge-lora \
          --utts 32 --reps 1 --configs "greedy batch8,beam8 batch8,greedy batch32" --out "$OUT/gpu_decode_bench_merged.json" ;;
      decode_0.5b_nocudnn)  # decode_0.5b_merged's greedy batch 8 with cuDNN attention disabled (the per-new-shape cost lead)
        run_bench decode_0.5b_nocudnn 150 60 "$OUT/gpu_decode_bench_nocudnn.json" "" "${decode[@]}" --llm qwen2-0.5b --merge-lora \
          --utts 32 --reps 1 --sdpa no-cudnn --configs "greedy batch8,greedy batch32" --out "$OUT/gpu_decode_bench_nocudnn.json" ;;
      train_0.5b_shapes)  # train_0.5b with a new batch shape at every step (as real data), 60 steps
        run_bench train_0.5b_shapes 200 60 "$OUT/gpu_train_bench_shapes.json" "$WORK/train-0.5b-shapes" \
          "$PY" bench/gpu_train_bench.py --llm 0.5b --steps 60 --distinct 60 --work "$WORK/train-0.5b-shapes" --out "$OUT/gpu_train_bench_shapes.json" ;;
      train_0.5b_shapes_cudnn)  # train_0.5b_shapes with cuDNN attention allowed (torch's default; the pipeline's is off)
        run_bench train_0.5b_shapes_cudnn 200 60 "$OUT/gpu_train_bench_shapes_cudnn.json" "$WORK/train-0.5b-shapes-cudnn" \
          "$PY" bench/gpu_train_bench.py --llm 0.5b --steps 60 --distinct 60 --cudnn-attention --work "$WORK/train-0.5b-shapes-cudnn" \
          --out "$OUT/gpu_train_bench_shapes_cudnn.json" ;;
      train_1.5b_paper_batch)  # the pipeline's default micro-batch (train.batch_max_audio_s 400): 32 x ~12 s, 100 steps
        run_bench train_1.5b_paper_batch 200 90 "$OUT/gpu_train_bench_1.5b_b32.json" "$WORK/train-1.5b-b32" \
          "$PY" bench/gpu_train_bench.py --llm 1.5b --batch 32 --audio-s 12 --steps 100 --work "$WORK/train-1.5b-b32" --out "$OUT/gpu_train_bench_1.5b_b32.json" ;;
      *) echo "unknown bench in GPU_RUN_BENCHES: $b"; FAILED=$((FAILED + 1)) ;;
    esac
  done

  say "summary (${SECONDS} s of ${BUDGET} s)"
  printf '  %s\n' "${RESULTS[@]}"
  ls -l "$OUT"
  if ((FAILED)); then
    echo "RESULT: FAILED ($FAILED step(s) above)"
    return 1
  elif ((NO_CUDA)); then
    echo "RESULT: no CUDA GPU here -- install, imports and preflight passed; every bench stopped at its CUDA check (exit 2)"
    return 2
  fi
  echo "RESULT: OK -- copy the JSONs to bench/results/ (see the top of bench/gpu_run.sh)"
  return 0
}

main 2>&1 | tee "$OUT/gpu_run.log"
exit "${PIPESTATUS[0]}"
