#!/usr/bin/env bash
# The paper-scale path on one GPU, proven in one run (issue 17): writes $OUT/gpu_check.json
# and $OUT/gpu_check.log (OUT defaults to out/gpu-check; data and runs go to a temporary
# folder, deleted at the end) and exits non-zero when any step fails. Steps and sizes:
# tools/gpu_check.py. About 5-8 minutes on one H100/H200.
#
#   tools/gpu_check.sh [--device cuda|cpu] [--tiny] [--wheels DIR] [--out DIR] [--only STEP...]
#   tools/gpu_check.sh --prepare-wheels DIR [--python-version 3.12]
#
# What it needs on the GPU machine: python3 with a CUDA build of torch (>= 2.1) and numpy,
# scipy, scikit-learn (the digits data), safetensors, tqdm; and kornia + kornia-rs, which GPU
# images usually lack (plus torchattacks, bench/attacks.py's reference, installed without its
# dependencies as in the Makefile; it needs torchvision, which GPU images of PyTorch have).
# The GPU machine has no package registry, so bring those as wheels:
# on a machine with PyPI run `tools/gpu_check.sh --prepare-wheels .whl` (kornia, kornia-rs
# for CPython 3.12 on x86-64 Linux and torchattacks, 7 MiB; pass --python-version to match the GPU
# machine's python3), carry the folder beside the working tree, and run
# `tools/gpu_check.sh --wheels .whl` there: the wheels are installed with
# `pip --no-index --target` into a temporary folder put on PYTHONPATH (nothing else is
# touched). A missing package or GPU is named before any step runs (exit 2). abstain itself runs
# from src/ (no install needed).
#
# Dry run on a CPU (what tests/test_gpu_path.py runs): tools/gpu_check.sh --device cpu --tiny
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WHEEL_PKGS=("kornia==0.9.0" "kornia-rs==0.2.0" "torchattacks==3.5.1")

device=cuda; tiny=(); wheels=""; out="${OUT:-$ROOT/out/gpu-check}"; only=(); prepare=""; pyver=3.12
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --tiny) tiny=(--tiny); shift ;;
    --wheels) wheels="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --prepare-wheels) prepare="$2"; shift 2 ;;
    --python-version) pyver="$2"; shift 2 ;;
    --only) shift; while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do only+=("$1"); shift; done ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ -n "$prepare" ]; then
  mkdir -p "$prepare"
  plats=()
  for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do plats+=(--platform "$p"); done
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
      "${plats[@]}" -d "$prepare" "${WHEEL_PKGS[@]}"
  du -sh "$prepare"; ls "$prepare"
  exit 0
fi

if [ -n "$wheels" ]; then
  site="$(mktemp -d "${TMPDIR:-/tmp}/abstain-gpu-site.XXXXXX")"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT/src:$ROOT/tools${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1


mkdir -p "$out"
cd "$ROOT"
# the progress lines also go to $out/gpu_check.log (the data and runs stay in a temporary folder)
exec 2> >(tee "$out/gpu_check.log" >&2)
exec "$PY" tools/gpu_check.py --device "$device" --out "$out" ${tiny[@]+"${tiny[@]}"} ${only[@]+--only "${only[@]}"}
