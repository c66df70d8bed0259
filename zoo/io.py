"""Crash-safe file writes and file hashing, standard library only.

Benchmark cell processes import this, so it must never pull in torch. A file is written to a hidden temporary name in the target folder, flushed to disk,
then renamed over the target (rename is atomic on POSIX), and the folder entry is flushed too:
a process killed at any instant leaves either the complete file or no file under the final
name. The temporary name carries the writer's pid so that a later run can remove leftovers of
a killed writer (`remove_stale_temporaries`) without touching a live writer's files.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_TMP_RE = re.compile(r"^\..+\.pid(\d+)\.[0-9a-f]{8}\.tmp$")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `target`; when the block succeeds it replaces `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.pid{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        yield tmp
        if tmp.exists():
            mode = 0o666 & ~_umask()
            os.chmod(tmp, mode)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(target: str | Path, data: bytes, *, _fault_half: bool = False) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            if _fault_half:  # test hook (EDGEZOO_BENCH_KILL_IN_WRITE): die with half a file on disk
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
            fh.write(data)


def read_json_dict(path: str | Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when the file is missing, unreadable or not an object
    (sidecars and run records that may not exist yet)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(target: str | Path, data: Any, **kw: Any) -> None:
    write_bytes(target, (json.dumps(data, indent=1, default=str) + "\n").encode(), **kw)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files left in `folder` by writers that no longer run; returns them."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        m = _TMP_RE.match(path.name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def is_temporary(path: str | Path) -> bool:
    return bool(_TMP_RE.match(Path(path).name))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
