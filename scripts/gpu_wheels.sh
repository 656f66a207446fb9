#!/usr/bin/env bash
# `make gpu-wheels`: download what the GPU device machine lacks (scripts/gpu_wheels.txt, at requirements/lock.txt's pins)
# as CPython 3.12 manylinux x86_64 wheels into .gpu_wheels/ (git-ignored), plus the shared T0 SFT file for the GPU
# benchmark when ../shared has it, and refuse a set over 60 MiB: the device takes 64 MiB of working tree and carry together.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.gpu_wheels
LIMIT_MIB=60
PY=${PY:-.venv/bin/python}
pins=()
while read -r name _; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  pattern="^$(sed 's/[-_.]/[-_.]/g' <<<"$name")=="
  pin=$(grep -i -E "$pattern" requirements/lock.txt || true)
  if [[ -z "$pin" ]]; then
    echo "scripts/gpu_wheels.txt: '$name' has no pin in requirements/lock.txt; add it there or remove the line" >&2
    exit 1
  fi
  pins+=("$pin")
done < scripts/gpu_wheels.txt
rm -rf "$DEST"
mkdir -p "$DEST"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d "$DEST" "${pins[@]}"
T0=../shared/data/sft/t0_mixture.jsonl
if [[ -f "$T0" ]]; then
  mkdir -p "$DEST/data" && cp "$T0" "$DEST/data/"
fi
bytes=$(du -sb "$DEST" | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
echo "$DEST: $(ls "$DEST"/*.whl | wc -l) wheels$([[ -d $DEST/data ]] && echo ' + data/t0_mixture.jsonl'), ${mib} MiB (limit ${LIMIT_MIB} MiB)"
if (( bytes > LIMIT_MIB * 1048576 )); then
  echo "$DEST is ${mib} MiB, over ${LIMIT_MIB} MiB: it would not travel to the device with the working tree (64 MiB)" >&2
  exit 1
fi
