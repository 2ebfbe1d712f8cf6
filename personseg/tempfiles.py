"""Temporary names for atomic outputs, and their cleanup.

Outputs are written as `.NAME.PID-RANDOM.tmp...` beside the final path and renamed into place. A run
killed outright (SIGKILL, power loss) cannot remove its temp; the next run writing the same path
removes those whose process is gone (`remove_stale`). SIGTERM is turned into `SystemExit(143)` by
`sigterm_exits`, so `finally`/`except BaseException` blocks remove temps as they do on Ctrl-C.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
import uuid
from pathlib import Path
from typing import Iterator


def temp_path(path: Path, name: str | None = None, suffix: str = "") -> Path:
    """A fresh hidden temp path beside `path`: `.NAME.PID-RANDOM.tmpSUFFIX` (NAME defaults to path.name)."""
    return path.with_name(f".{name or path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{suffix}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(path: Path, name: str | None = None, suffix: str = "") -> list[Path]:
    """Remove the temps `temp_path(path, name, suffix)` left by processes that no longer run (files or
    folders); returns what was removed. Temps of live processes (a concurrent run) are left alone."""
    folder = path.parent
    if not folder.is_dir():
        return []
    pattern = re.compile(re.escape(f".{name or path.name}.") + r"(\d+)-[0-9a-f]{8}\.tmp" + re.escape(suffix) + "$")
    removed = []
    for entry in folder.iterdir():
        match = pattern.match(entry.name)
        if match and not _alive(int(match.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit(143) in the main thread (cleanup runs, exit 143).
    Does nothing outside the main thread, where signal handlers cannot be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = "", *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp path beside `path` to write; on success it is renamed onto `path` (a reader never
    sees half a file), on any failure (Ctrl-C included) it is removed and `path` is untouched. Creates
    missing folders and first removes temps that killed runs left for `path`. The file is opened by the
    caller with a plain open(), so it gets the usual permissions from the umask (not mkstemp's 0600).
    `suffix` keeps the extension for writers that read it; `overwrite=False` refuses an existing `path`
    (checked again just before the rename, in case it appeared meanwhile)."""
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists (use --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path, suffix=suffix)
    temp = temp_path(path, suffix=suffix)
    try:
        yield temp
        if not overwrite and path.exists():
            raise FileExistsError(f"{path} already exists (use --overwrite to replace it)")
        os.replace(temp, path)
    finally:
        if temp.is_dir() and not temp.is_symlink():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)
