#!/usr/bin/env bash
# Set up coworld on a fresh machine, into the current Python (activate a venv first if you want one).
#
#   bash scripts/setup.sh            core library (built-in suite; no MuJoCo)
#   bash scripts/setup.sh dev,all    + test tools and every benchmark simulator (what CI uses)
#
# torch is installed FIRST and explicitly: a bare `torch` requirement makes pip pick the newest
# build with several GB of CUDA packages. CPU machines get torch==2.13.0 (the CPU wheel);
# GPU users: install the torch build for your CUDA first (see README), then run with SKIP_TORCH=1.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if [[ "${SKIP_TORCH:-0}" != "1" ]]; then
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
    "$PY" -m pip install -q "torch==$TORCH_VERSION"
  fi
fi

# Headless rendering libraries for the MuJoCo benchmarks (EGL, OSMesa fallback), only when missing.
if [[ ",$EXTRAS," == *",all,"* || ",$EXTRAS," == *",dmc,"* || ",$EXTRAS," == *",metaworld,"* || ",$EXTRAS," == *",robodesk,"* ]]; then
  if ! ldconfig -p | grep -q "libEGL.so.1" || ! ldconfig -p | grep -q "libOSMesa"; then
    if command -v apt-get >/dev/null && [[ "$(id -u)" == "0" ]]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libgl1-mesa-dri libosmesa6 >/dev/null
    else
      echo "note: install EGL or OSMesa (Debian: libegl1 libgl1-mesa-dri libosmesa6) for MuJoCo rendering" >&2
    fi
  fi
fi

if [[ -n "$EXTRAS" ]]; then
  "$PY" -m pip install -q -e ".[$EXTRAS]"
else
  "$PY" -m pip install -q -e .
fi
"$PY" -c "import coworld, torch; print(f'coworld {coworld.__version__} ready (torch {torch.__version__})')"
