#!/usr/bin/env bash
# The accelerator check (bench/device_check.py), for a lent GPU/TPU machine that has jax
# but not this project's installs and no network: runs from the source tree against the
# machine's jax, installing the project's missing pure-Python needs from wheels in .whl/
# when they are there (fetch them beforehand with `bash bench/device_check.sh --fetch`
# on a machine with PyPI). Within 8 minutes it prints one row per check; with no
# accelerator it prints one line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(grain array-record SQLAlchemy psycopg psycopg-binary typer)
if [ "${1:-}" = "--fetch" ]; then
  py=${PYTHON:-python3}
  for w in "${WHEELS[@]}"; do
    $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$w" || echo "device_check: could not fetch a wheel of $w (the check that needs it will say so)"
  done
  ls .whl
  exit 0
fi
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/device_site .whl/*.whl
  export PYTHONPATH="/tmp/device_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 python3 bench/device_check.py "$@"
