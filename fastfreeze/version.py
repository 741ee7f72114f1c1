"""The installed version of fastfreeze (it lives in settings.ini only; the installed metadata carries it here)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fastfreeze")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0+unknown"
