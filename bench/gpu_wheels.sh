#!/usr/bin/env bash
# The wheels bench/gpu.py needs on a GPU machine that has torch, transformers, safetensors, rich
# and pyyaml but no package index: saerun's other imports, for CPython 3.12 on manylinux x86-64,
# without their dependencies (the machine has those, or bench/gpu.py stubs them: datasets,
# pyarrow, pandas, sentencepiece and protobuf are imported by transformer-lens's bridge but
# never used on saerun's path). Downloads into bench/.gpu-wheels/ (ignored by git; about 12 MB),
# which the device run carries along:
#   bash bench/gpu_wheels.sh && <device> python bench/gpu.py --wheels bench/.gpu-wheels
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-../.venv/bin/python}
OUT=.gpu-wheels
mkdir -p "$OUT"
"$PY" -m pip download --quiet --disable-pip-version-check --dest "$OUT" --no-deps \
  --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  "pydantic>=2.6,<3" pydantic-core annotated-types typing-inspection typing-extensions \
  "transformer-lens==4.3.0" jaxtyping wadler-lindig einops fancy-einsum beartype typeguard \
  accelerate psutil \
  "sqlite-utils>=3.36" sqlite-fts4 click click-default-group tabulate pluggy python-dateutil six \
  "submitit>=1.5" cloudpickle
# pydantic-core must match the pydantic release: pip picked the newest of each; re-pick the
# core that pydantic pins if they disagree.
core=$(unzip -p "$OUT"/pydantic-2*.whl 'pydantic-*.dist-info/METADATA' \
       | sed -n 's/^Requires-Dist: pydantic-core==\([0-9.]*\).*/\1/p')
if [ -n "$core" ] && ! ls "$OUT"/pydantic_core-"$core"-* >/dev/null 2>&1; then
  rm -f "$OUT"/pydantic_core-*.whl
  "$PY" -m pip download --quiet --disable-pip-version-check --dest "$OUT" --no-deps \
    --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "pydantic-core==$core"
fi
du -sh "$OUT"
