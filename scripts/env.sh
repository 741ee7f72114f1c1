# Sourced by scripts/test.sh and scripts/demo.sh: create or reuse the virtual environment and install
# torch 2.14.1 / torchvision 0.29.1 and fastfreeze (editable) with the extras named in $FASTFREEZE_EXTRAS.
# The venv lives outside the checkout ($FASTFREEZE_VENV, default ~/.venvs/fastfreeze) so fresh clones reuse it.
set -euo pipefail
# idle OpenMP threads sleep instead of spinning (4-5x faster CPU runs on a busy machine, measured here)
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
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

# Fashion-MNIST for the demo and the notebooks: the Debian package dataset-fashion-mnist (MIT).
ensure_fashion_mnist() {
  if [ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || [ -n "${FASTFREEZE_DATA:-}" ]; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing the Debian package dataset-fashion-mnist"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "Fashion-MNIST not found: run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or set"
    echo "FASTFREEZE_DATA to a folder with the four *-ubyte.gz files (tests that need it are skipped; under CI=true"
    echo "they fail, naming it: the 4 notebooks, the demo test and the real-data test)."
  fi
}

# A C++ compiler for torch.compile's default backend on the CPU (tests/test_compile.py): g++ from the system.
ensure_cxx() {
  if command -v "${CXX:-g++}" >/dev/null || command -v c++ >/dev/null || command -v clang++ >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing the Debian package g++ (torch.compile's C++ backend)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
  else
    echo "no C++ compiler: run 'sudo apt-get install g++' (the torch.compile test is skipped; under CI=true it fails)."
  fi
}
