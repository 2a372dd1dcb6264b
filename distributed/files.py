"""File helpers shared by the engine and the analysis: atomic writes, free space, and full-disk errors."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(e: BaseException | None) -> bool:
    """Did this error (or one it was raised from) come from a full disk? An OSError ENOSPC/EDQUOT (pyarrow's
    too), or SQLite's "database or disk is full" (as Optuna's storage wraps it)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return True
        if "database or disk is full" in str(e) or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def free_bytes(path) -> int:
    """Free bytes (for this user) on the file system holding path, or the nearest existing folder above it."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def low_disk_message(path, need_mb: int, free: int | None = None) -> str:
    """The one line for a run whose disk is (nearly) full: where, how much is free, the --min-free-mb bound."""
    free = free_bytes(path) if free is None else free
    return (f"no space left for the run in {path}: {free / 2**20:.1f} MB free on its file system, the search "
            f"stops below {need_mb} MB (--min-free-mb)")


def low_disk(path, need_mb: int) -> str | None:
    """low_disk_message when the file system of path has less than need_mb MB free, else None."""
    free = free_bytes(path)
    return low_disk_message(path, need_mb, free) if free < need_mb * 2**20 else None


def write_bytes_atomic(path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(o):
    import numpy as np
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
