# Sourced by scripts/test.sh and scripts/demo.sh: create or reuse the virtual environment and install
# torch 2.14.1 / torchvision 0.29.1 and fastfreeze (editable) with the extras named in $FASTFREEZE_EXTRAS.
# The venv lives outside the checkout ($FASTFREEZE_VENV, default ~/.venvs/fastfreeze) so fresh clones reuse it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FASTFREEZE_VENV:-$HOME/.venvs/fastfreeze}"
if [ ! -x "$venv/bin/python" ]; then
  echo "creating virtual environment $venv"
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
# torch and torchvision together, pinned: other pairs fail to import side by side
"$py" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$py" -m pip install -q -e "$repo[${FASTFREEZE_EXTRAS:-dev}]"
