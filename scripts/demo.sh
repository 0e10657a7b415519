#!/usr/bin/env bash
# Set up (if needed) and run the main job on the bundled defaults: train a prefix for E2E on the
# bundled SmolLM2-135M (configs/e2e-smollm2.yaml), then print test BLEU & co. and a few generations.
# Options are passed to `prefixtune train` (e.g. --steps 100, --out runs/other; --help lists all).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/prefixtune train --config configs/e2e-smollm2.yaml "$@"
