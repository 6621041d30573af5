"""Where ganflow may write: checks on output folders, so no command deletes or overwrites what it did not write.

An output folder must be missing, empty, or one ganflow wrote before (recognized by its own files). Paths that
name a place full of other things (the current folder, home, the filesystem root, the checkout) are refused
outright, whatever they hold. Every refusal is a `PathError` (a ValueError: the CLI prints it as one line,
exit code 2) that names the option and the value.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

# The ganflow checkout: never an output folder (its params.yaml, dvc.yaml and data/ live there).
_CHECKOUT = Path(__file__).resolve().parents[2]
# dataset.json's marker: a folder whose dataset.json says this was written by ganflow curate.
GENERATOR = "ganflow"


class PathError(ValueError):
    """An option names a path ganflow must not write to, or a path of the wrong kind."""


def _expand(value: str, option: str) -> Path:
    if value is None or not str(value).strip():
        raise PathError(f"{option} {value!r}: an empty path means the current folder; name a folder")
    return Path(os.path.expanduser(str(value)))


def _refuse_shared_places(path: Path, value: str, option: str, cwd_too: bool) -> None:
    """The filesystem root, home, the checkout and (for dataset folders) the current folder and its parents."""
    resolved = path.resolve()
    home = Path.home().resolve()
    cwd = Path.cwd().resolve()
    named = {Path(resolved.anchor): "the filesystem root", home: "your home folder",
             _CHECKOUT: "the ganflow checkout"}
    if resolved in named:
        raise PathError(f"{option} {value!r} is {named[resolved]}: name a new or empty folder for ganflow's output")
    if cwd_too and (resolved == cwd or cwd.is_relative_to(resolved)):
        raise PathError(f"{option} {value!r} is the current folder or one of its parents: "
                        "name a new or empty folder for ganflow's output")


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_writable(path: Path, value: str, option: str) -> None:
    base = _nearest_existing(path)
    if not base.is_dir():
        raise PathError(f"{option} {value!r}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PathError(f"{option} {value!r}: {base} is not writable")


def is_curated_dataset(folder: Path) -> bool:
    """dataset.json written by ganflow curate: its marker, or (datasets from before the marker) its fields
    next to a manifest.jsonl."""
    try:
        meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict):
        return False
    if meta.get("generator") == GENERATOR:
        return True
    return {"count", "content_hash", "shards", "reasons"} <= set(meta) and (folder / "manifest.jsonl").is_file()


def is_raw_store(folder: Path) -> bool:
    return (folder / "provenance.jsonl").is_file() or (folder / "files").is_dir()


def _check_folder(value: str, option: str, owned, what: str, dataset: bool = False) -> Path:
    path = _expand(value, option)
    _refuse_shared_places(path, value, option, cwd_too=True)
    _refuse_inside_dataset(path, value, option, itself_ok=dataset)
    if path.is_symlink() and not path.exists():
        raise PathError(f"{option} {value!r} is a broken link")
    if path.exists() and not path.is_dir():
        raise PathError(f"{option} {value!r} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not owned(path):
        raise PathError(f"{option} {value!r} is not empty and not {what}: ganflow writes only into a new or empty "
                        "folder, or one it wrote before")
    _check_writable(path, value, option)
    return path


def check_dataset_dir(value: str, option: str = "--out") -> Path:
    """A curated dataset's folder: missing, empty, or a dataset ganflow curate wrote. Returns it (~ expanded)."""
    return _check_folder(value, option, is_curated_dataset, "a dataset ganflow curate wrote (no dataset.json of it)",
                         dataset=True)


def is_generated_dir(folder: Path) -> bool:
    """Only what `ganflow generate` writes: seed<N>.png and grid.png."""
    return all(re.fullmatch(r"seed\d+\.png|grid\.png", p.name) and p.is_file() for p in folder.iterdir())


def check_generated_dir(value: str, option: str = "--out") -> Path:
    """`ganflow generate`'s folder: missing, empty, or holding only its seed<N>.png and grid.png."""
    return _check_folder(value, option, is_generated_dir, "a folder ganflow generate wrote (only seed<N>.png, grid.png)")


def check_morph_file(value: str, option: str = "--out") -> Path:
    """`ganflow morph`'s output: a new file, or a GIF ganflow wrote before (its comment says so); never another
    file of that name (an MP4 carries no such mark: an existing one is refused)."""
    from tasks.serving.generation import is_ganflow_gif

    path = _expand(value, option)
    owned = is_ganflow_gif if path.suffix.lower() == ".gif" else (lambda _p: False)
    return check_output_file(value, option, owned, "a morph")


def check_output_file(value: str, option: str, owned, what: str) -> Path:
    """An output file (import's network, morph's GIF): outside any dataset, and missing or a regular file that
    `owned` recognizes as ganflow's (models.atomic_file's rule, which publish checks again when it writes)."""
    from models.atomic_file import OutputError, check_replaceable

    path = _expand(value, option)
    _refuse_inside_dataset(path, value, option)
    try:
        check_replaceable(path, owned, what)
    except OutputError as e:
        raise PathError(f"{option} {value!r}: {e}") from None
    _check_writable(path.parent, value, option)
    return path


def dataset_around(path: Path) -> Path | None:
    """The curated dataset `path` is in (itself or a folder above it), or None."""
    p = path.absolute()
    for folder in (p, *p.parents):
        if (folder / "dataset.json").is_file() and is_curated_dataset(folder):
            return folder
    return None


def _refuse_inside_dataset(path: Path, value: str, option: str, itself_ok: bool = False) -> None:
    """Nothing but `ganflow curate` writes into a curated dataset (its files are checked against dataset.json)."""
    found = dataset_around(path)
    if found is not None and not (itself_ok and found == path.absolute()):
        where = "is" if found == path.absolute() else f"is inside {found},"
        raise PathError(f"{option} {value!r} {where} a curated dataset: ganflow writes nothing else there; "
                        "name a folder outside it")


def check_raw_dir(value: str, option: str = "--raw-dir") -> Path:
    """A raw store's folder: missing, empty, or a raw store (provenance.jsonl, files/)."""
    return _check_folder(value, option, is_raw_store, "a ganflow raw store (no provenance.jsonl or files/)")


def check_store_root(value: str, option: str) -> Path:
    """A folder ganflow fills with its own named subfolders (cache, raw root): a folder or missing, writable."""
    path = _expand(value, option)
    _refuse_shared_places(path, value, option, cwd_too=False)
    if path.exists() and not path.is_dir():
        raise PathError(f"{option} {value!r} is a file, not a folder")
    _check_writable(path, value, option)
    return path
