"""The few ways the studio writes files safely, in one place.

`atomic_write` (temp file in the same folder, fsync, rename, fsync the folder: a reader sees the
old file or the new one, never half of either, even after a power cut), `fsync_dir`, and
`locked` (an exclusive `flock` on a lock file, shared by threads and processes alike), and
`media_root` (where inputs/ and outputs/ live: MEDIA_DIR, else DATA_DIR). Every file
made here is private to the studio's user (0600). This module imports nothing of the studio, so
the store, the accounts and the media code can all use it.
"""

import fcntl
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path):
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd, data):
    """Write every byte (os.write may write fewer than asked, e.g. on a nearly full disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def atomic_write(path, data, mode=0o600):
    """Replace `path` with `data` (bytes or str) all at once."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


DISK_FULL_MARGIN = 16 * 1024 * 1024
# DATA_DIR -> MEDIA_DIR of the studio using it (set_media_root at app start): the pipeline's jobs
# run outside any app context and know only their store's DATA_DIR.
_media_roots = {}


def set_media_root(data_dir, media_dir):
    """Keep `inputs/` and `outputs/` of the studio in `data_dir` under `media_dir` instead."""
    _media_roots[os.path.realpath(data_dir)] = Path(os.path.realpath(media_dir))


def media_root(data_dir):
    """The folder holding a studio's `inputs/` and `outputs/`: MEDIA_DIR when set, else DATA_DIR.
    Task records name their files relative to it (`inputs/<id>/first.png`)."""
    return _media_roots.get(os.path.realpath(data_dir)) or Path(data_dir)


def disk_nearly_full(path, margin=DISK_FULL_MARGIN):
    """True when the disk holding `path` has less than `margin` bytes (or 2 % of a small disk)
    left: writes fail soon, or already do."""
    usage = shutil.disk_usage(path)
    return usage.free < min(margin, usage.total // 50)


@contextmanager
def locked(lock_path, shared=False):
    """Hold a lock on `lock_path` (made if missing) for the block: exclusive, or `shared` with
    other readers."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
