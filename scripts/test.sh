#!/usr/bin/env bash
# The test command: installs what it needs (see env.sh), then runs pytest: unit tests and notebooks.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k groups`.
FASTFREEZE_EXTRAS=dev
source "$(dirname "$0")/env.sh"
ensure_fashion_mnist
ensure_cxx
cd "$repo"
"$py" -m pytest -q --durations=15 "$@"
