"""Files that are never seen half-written: every avemo output (tables, figures, videos,
checkpoints, cache entries, manifests, a training run's files) is written through here.

``atomic_path`` gives a temporary name beside the final one and renames it into place when the
block ends without an error; ``write_text`` is that for a whole text; ``append_line`` adds one
line to a log in a single write, so concurrent writers never interleave within a line.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def identity(path: Path) -> tuple[int, ...]:
    """What tells one file from another at a path: device, inode, size and modification time
    (empty when it cannot be read)."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _temporary_prefix(path: Path) -> str:
    """How ``atomic_path``'s temporary names for ``path`` begin (the writing pid follows)."""
    return f".{path.name}.tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists (another user's), or not a pid we can judge: leave its files
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that ``atomic_path`` left beside ``path`` in runs that were
    killed before they could clean up (``.<name>.tmp<pid>[suffix]`` of a process that no longer
    exists on this machine). Returns what was removed."""
    path = Path(path)
    removed: list[Path] = []
    prefix = _temporary_prefix(path)
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(prefix + "*"):
        pid = tmp.name[len(prefix):].split(".")[0]  # what follows is atomic_path's suffix
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def _new_file_mode() -> int:
    """The mode ``open(..., "w")`` gives a new file here (0o666 less the umask), read without
    changing the umask (``/proc``), so that every output is readable alike, whichever library
    wrote it (safetensors writes 0600)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


NEW_FILE_MODE = _new_file_mode()


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends
    without an error, removed in every case, so ``path`` is never seen half-written. ``suffix``
    ends the temporary name, for writers that pick the format by extension (".png", ".mp4")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_temporary_prefix(path)}{os.getpid()}{suffix}")
    try:
        yield tmp
        os.chmod(tmp, NEW_FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` as the whole of ``path``, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return Path(path)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Add ``line`` (and a newline) to the end of ``path`` in one write (``O_APPEND``): lines
    of concurrent writers never mix, and a killed writer leaves whole lines."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
    finally:
        os.close(fd)
