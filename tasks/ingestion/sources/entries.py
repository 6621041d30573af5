"""What a source yields per folder entry or archive member: a way to open it, or the reason it is refused."""
from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from typing import BinaryIO, Callable

# Directory names that look like an image file: recorded (`directory`) so a user sees why "x.jpg" is missing.
IMAGE_NAME = re.compile(r".*\.(jpe?g|png|gif|webp|tiff?|bmp|heic|avif|jfif)$", re.IGNORECASE)


class Refused(Exception):
    """This entry cannot be stored; `reason` is its manifest reason word."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Entry:
    name: str
    open: Callable[[], BinaryIO] | None = None   # None when the entry is refused up front
    reason: str | None = None
    detail: str = ""
    packed: int | None = None                    # compressed size (zip), for the ratio cap
    size: int | None = None                      # size as the header or the file system says


def image_named(path: str) -> bool:
    """A directory's last path part looks like an image file name."""
    return bool(IMAGE_NAME.fullmatch(path.rstrip("/").rsplit("/", 1)[-1]))


def kind_of(mode: int) -> str:
    """A special file's kind, in words, from its stat mode."""
    for test, word in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return word
    return "a special file"
