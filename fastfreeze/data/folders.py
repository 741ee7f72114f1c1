"""Reading a folder of images, one sub-folder per class (`ImageDataLoaders.from_folder`), so that what is used and
what is left out are both known:

- each real folder is read once: links are followed, but a link to a folder already read (a symlink loop, or a
  second link to the same folder) is not read again;
- hidden files and folders (names starting with '.') are ignored; files without an image extension, links to
  files that do not exist, and images lying directly in the folder of classes (outside every class folder) are
  skipped and reported (`ScannedFiles.skipped`; dangling links and stray images also with a warning, up front,
  instead of an error at whatever epoch first draws them);
- the same file reached twice (through a link) is found later by `validation.find_duplicates`, on real paths.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..core.validation import listing, warn_data

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
FOLDER_LAYOUT = ("expected path/train/<class>/<image> and path/valid/<class>/<image>, "
                 "or path/<class>/<image> with valid_pct=0.2")


@dataclass
class ScannedFiles:
    """Image files found, and `(path, why)` for each file or folder left out."""
    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _suffixes(extensions: Sequence[str]) -> set[str]:
    return {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}


def scan_image_files(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> ScannedFiles:
    """Image files anywhere under `folder`, sorted, each real folder read once (module docstring)."""
    suffixes = _suffixes(extensions)
    scan = ScannedFiles()
    visited = {os.path.realpath(folder)}
    for root, dirs, files in os.walk(folder, followlinks=True):
        kept = []
        for d in sorted(dirs):
            if d.startswith("."):
                continue
            real = os.path.realpath(os.path.join(root, d))
            if real in visited:
                scan.skipped.append((os.path.join(root, d), f"a link to a folder already read ({real}): read once"))
                continue
            visited.add(real)
            kept.append(d)
        dirs[:] = kept
        for name in files:
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            if os.path.splitext(name)[1].lower() not in suffixes:
                scan.skipped.append((path, "not an image file (extension)"))
            elif os.path.islink(path) and not os.path.exists(path):
                scan.skipped.append((path, f"a link to a file that does not exist ({os.readlink(path)})"))
            else:
                scan.files.append(Path(path))
    scan.files.sort()
    return scan


def get_image_files(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files anywhere under `folder`, sorted (`scan_image_files` without what it skipped)."""
    return scan_image_files(folder, extensions).files


def class_folders(folder: Path) -> list[Path]:
    """The visible sub-folders of `folder`, sorted by name: one per class."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def require_folder(folder: Path, what: str) -> None:
    if not folder.exists():
        raise FileNotFoundError(f"{what} {folder} does not exist ({FOLDER_LAYOUT})")
    if not folder.is_dir():
        raise NotADirectoryError(f"{what} {folder} is not a folder ({FOLDER_LAYOUT})")


@dataclass
class ClassFolders:
    """What a folder of class folders holds: the class names (sorted), each image file with its class name, and
    what was skipped."""
    names: list[str]
    files: list[Path]
    classes: list[str]
    skipped: list[tuple[str, str]]


def read_class_folders(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                       notes: Optional[list[str]] = None, training: bool = True) -> ClassFolders:
    """The image files of `folder/<class>/...`. A training folder must have class folders, each holding images
    (a ValueError otherwise); images directly in `folder` are skipped with a warning (kept in `notes`), as are
    dangling links."""
    folders = class_folders(folder)
    if not folders:
        stray = get_image_files(folder, extensions)
        found = "images but no class sub-folders" if stray else "no class sub-folders"
        raise ValueError(f"found {found} in {folder}: {FOLDER_LAYOUT}")
    suffixes = _suffixes(extensions)
    stray = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and not p.is_dir()
                   and p.suffix.lower() in suffixes)
    skipped = [(str(p), "outside the class folders: not used") for p in stray]
    if stray:
        warn_data(f"{len(stray)} image(s) lie directly in {folder}, outside the class folders, and are not used:\n"
                  f"{listing([str(p) for p in stray])}\nMove each into the folder of its class "
                  f"({folder}/<class>/) or remove it", notes)
    files, classes = [], []
    for class_folder in folders:
        scan = scan_image_files(class_folder, extensions)
        if not scan.files and training:
            raise ValueError(f"class folder {class_folder} holds no image files ({', '.join(extensions)}): "
                             f"add images or remove the folder")
        files += scan.files
        classes += [class_folder.name] * len(scan.files)
        skipped += scan.skipped
    dangling = [p for p, why in skipped if why.startswith("a link to a file that does not exist")]
    if dangling:
        warn_data(f"{len(dangling)} link(s) in {folder} point to files that do not exist and are not used:\n"
                  f"{listing(dangling)}\nRestore their targets or remove the links", notes)
    return ClassFolders([f.name for f in folders], files, classes, skipped)
