"""Packaging: all metadata comes from settings.ini (read with configparser)."""
from configparser import ConfigParser
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
cfg = ConfigParser()
cfg.read(here / "settings.ini")
meta = cfg["DEFAULT"]


def words(key: str) -> list[str]:
    return meta.get(key, "").split()


def extras() -> dict[str, list[str]]:
    """Every `<name>_requirements` key but the runtime's: `pip install 'fastfreeze[<name>]'`."""
    return {key.removesuffix("_requirements"): words(key) for key in meta
            if key.endswith("_requirements") and key != "requirements"}


setup(
    name=meta["lib_name"],
    version=meta["version"],
    description=meta["description"],
    long_description=(here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    author=meta["author"],
    license=meta["license"],
    url=meta["url"],
    keywords=meta["keywords"],
    python_requires=f">={meta['min_python']}",
    packages=find_packages(include=["fastfreeze", "fastfreeze.*"]),
    install_requires=words("requirements"),
    extras_require=extras(),
    entry_points={"console_scripts": words("console_scripts")},
)
