#!/bin/sh
# The device tool's entry point (docs/gpu.md): every call runs this same command,
# carrying one of the .whl/N folders made by `gpu_check.py --prepare-carry`.
#
# It moves what this call carried into a folder outside the repository, which
# outlives the call while the machine stays warm, then runs the check with
# --wheels pointing there. Until every part of a split wheel has arrived the
# check only says which parts are missing and exits 3; the call that brings
# the last part installs the wheels and runs the whole check. Arguments are
# passed on to gpu_check.py (default: --device cuda; results under $OUT).
set -u
cd "$(dirname "$0")/.." || exit 2
STASH=${HIGHPEAKS_WHEELS:-/tmp/highpeaks-wheels}
mkdir -p "$STASH"
for f in .whl/*/*; do
    if [ -f "$f" ]; then mv -f "$f" "$STASH/"; fi
done
echo "wheel stash $STASH:"
ls -l "$STASH"
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" scripts/gpu_check.py --wheels "$STASH" "$@"
