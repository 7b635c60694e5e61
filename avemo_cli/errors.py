"""Errors a user can cause. Each carries a one-line message naming the file and the cause."""
from __future__ import annotations


def plural(n: int, word: str) -> str:
    """``n`` and ``word``, plural unless ``n`` is 1 ("1 sequence", "3 sequences")."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def printable(text: str) -> str:
    """``text`` safe to show on a terminal: control characters (ESC, ``\x01``, ``\x0b``, a
    line break inside a file's name) and bytes of a name that is not UTF-8 written as escapes
    (``\x1b``), so that a hostile file name cannot move the cursor or recolour the screen."""
    out = []
    for c in text:
        o = ord(c)
        if o < 32 or o == 127 or 0x80 <= o < 0xA0:
            out.append(f"\\x{o:02x}")
        elif 0xDC80 <= o <= 0xDCFF:  # a byte that is not UTF-8 (os.fsdecode's surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        elif 0xD800 <= o < 0xE000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(c)
    return "".join(out)


class AvemoError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""


class MediaError(AvemoError):
    """Missing, unreadable or unsupported media."""


class DecoderError(AvemoError):
    """The decoder asked for (``AVEMO_FFMPEG``) cannot be run."""


class NoFaceError(AvemoError):
    """The model needs a face and none was found."""


class CheckpointError(AvemoError):
    """A missing, corrupt or incompatible checkpoint."""


class ModalityError(AvemoError):
    """The input lacks what the checkpoint needs, or the checkpoint lacks a needed branch."""


class OutputError(AvemoError):
    """The output location cannot be written (not a folder, no permission, read-only)."""


class DeviceError(AvemoError):
    """An unknown or unavailable compute device (``--device``)."""


class OrientationError(AvemoError):
    """The face is upside down as the video is displayed (a wrong rotation tag, a camera held
    upside down): annotating it would read the wrong expression."""
