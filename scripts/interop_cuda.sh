#!/usr/bin/env bash
# Byte-for-byte comparison with transformers + bitsandbytes on CUDA. Run on a machine with an NVIDIA GPU from
# the repository root: builds lowbit, sets up a virtualenv (torch with CUDA, transformers, bitsandbytes,
# accelerate, safetensors) unless PYTHON points at one that has them, then runs scripts/interop_cuda.py.
set -euo pipefail
cargo build --release -p lowbit-cli
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  python3 -m venv scripts/.venv
  scripts/.venv/bin/pip install -q torch transformers bitsandbytes accelerate safetensors
  PYTHON=scripts/.venv/bin/python
fi
"$PYTHON" scripts/interop_cuda.py --lowbit target/release/lowbit "$@"
