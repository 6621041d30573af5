"""argparse `type=` checks shared by every `ganflow` command, and a parser whose errors are one line.

Each check turns the option's text into its value or raises ArgumentTypeError with the value and the rule;
argparse prefixes the option's name, so the user reads e.g.
`ganflow generate: error: argument --trunc: 'nan' is not a finite number from 0 to 2`. These run while the
arguments are parsed, before any command imports torch or starts work; check_device_available runs after, and
asks torch which devices this machine has.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from tasks.common.settings import DEVICE, MAX_SEED, shown_input

MAX_SEEDS = 10_000          # seeds one `generate`/`morph` call takes (each image is kept in memory for the grid)
MAX_PORT = 65535


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), with a pointer to --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def shown(text: str) -> str:
    """An argument as the user wrote it, cut short when long (a 5001-digit number is not echoed whole)."""
    return shown_input(text)


def _bad(text: str, rule: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"{shown(text)} is not {rule}")


def integer(lo: int | None = None, hi: int | None = None, rule: str | None = None):
    """An int within [lo, hi] (either bound may be None)."""
    rule = rule or ("an integer" + (f" from {lo} to {hi}" if lo is not None and hi is not None else
                                    f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else ""))

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise _bad(text, rule) from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise _bad(text, rule)
        return value

    parse.__name__ = "integer"
    return parse


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, rule: str | None = None):
    """A finite float within [lo, hi] (or (lo, hi] with lo_open). nan and inf are never accepted."""
    if rule is None:
        low = f"> {lo:g}" if lo_open else f">= {lo:g}"
        rule = ("a finite number" + (f" from {lo:g} to {hi:g}" if lo is not None and hi is not None and not lo_open
                                     else f" {low}" + (f" and <= {hi:g}" if hi is not None else "")
                                     if lo is not None else f" <= {hi:g}" if hi is not None else ""))

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _bad(text, rule) from None
        if not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo)) \
                or (hi is not None and value > hi):
            raise _bad(text, rule)
        return value

    parse.__name__ = "number"
    return parse


def torch_device(text: str) -> str:
    """A device for evaluation and generation: train.device's rule (tasks.common.settings.DEVICE), without auto (syntax
    only: whether this machine has it is checked where it is used)."""
    if text == "auto" or not DEVICE.check(text):
        raise _bad(text, "a device: cpu, cuda, cuda:N or mps")
    return text


def seeds(text: str) -> list[int]:
    """'0-63', '1,5,9' or a mix; at most MAX_SEEDS seeds, each 0..2**32-1 (a range is counted before it is made)."""
    from tasks.serving.generation import parse_seeds

    try:
        return parse_seeds(text, max_count=MAX_SEEDS, max_seed=MAX_SEED)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def writable_folder(text: str) -> str:
    """A folder to write into: an existing folder we may write to, or a path whose nearest existing parent is one.
    (A file where a folder belongs, or a read-only folder, is refused before any work.)"""
    if not text.strip():
        raise _bad(text, "a folder (it is empty)")
    path = Path(text).expanduser()
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise _bad(text, "a folder (it is a dangling link)")
        probe = probe.parent
    if not probe.is_dir():
        where = "it is" if probe == path else f"{probe} is"
        raise _bad(text, f"a folder ({where} a file)")
    # effective ids: what the process may really do (also under a set-uid or seteuid'd caller)
    if not os.access(probe, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        where = "it is" if probe == path else f"{probe} is"
        raise _bad(text, f"a writable folder ({where} read-only)")
    return text


def writable_file(text: str) -> str:
    """An output file: not a folder, in a folder we may write into."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise _bad(text, "a file (it is a folder)")
    writable_folder(str(path.parent))
    return text


def existing_folder(text: str) -> str:
    if not Path(text).expanduser().is_dir():
        raise _bad(text, "an existing folder")
    return text


def existing_file(text: str) -> str:
    if not Path(text).expanduser().is_file():
        raise _bad(text, "an existing file")
    return text


def _url_without_credentials(text: str) -> str | None:
    """An object-store URL, checked to carry no credentials (refused without echoing them); None for a path."""
    from tasks.storage.url import CredentialsInUrl, check_no_credentials, is_url, local_path

    try:
        check_no_credentials(text)
    except CredentialsInUrl as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text if is_url(text) else local_path(text)


def run_folder(text: str) -> str:
    """A run folder: an object-store URL (s3://bucket/runs/x, gs://..., its run is cached locally) or, for a local
    path or file:// URL, a writable_folder."""
    local = _url_without_credentials(text)
    return text if local == text and "://" in text else writable_folder(local or text)


def snapshot_source(text: str) -> str:
    """A snapshot to read: an object-store URL (fetched later, checked against its run's manifest) or an
    existing_file."""
    local = _url_without_credentials(text)
    return text if local == text and "://" in text else existing_file(local or text)


def check_device_available(name: str, option: str) -> None:
    """Refuse a device this machine does not have, before any work (torch's own error comes mid-run)."""
    if not DEVICE.check(name):  # the settings' one rule, before cuda:N is read as a number
        raise ValueError(f"{option} {name!r} is not {DEVICE.text}")
    import torch

    if name.startswith("cuda"):
        index = int(name.split(":")[1]) if ":" in name else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            have = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise ValueError(f"{option} {name}: this machine has {have} CUDA device(s); use cpu or auto")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{option} mps: this machine has no MPS device; use cpu or auto")
