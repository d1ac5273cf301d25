#!/usr/bin/env bash
# The GPU check, scripts/gpu_check.py: `scripts/gpu_check.sh OUT_DIR` on a GPU machine,
# `scripts/gpu_check.sh --dry-run OUT_DIR` on a CPU, `scripts/gpu_check.sh --fetch-wheels` to fill wheels/.
# PYTHON picks the interpreter (default python3).
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" "$@"
