"""Writing files so that a crash leaves them whole or absent, never half-written."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

#: The temporary files :func:`atomic_write_bytes` makes: ``.<name>.<8 random chars>.tmp``.
TEMP_FILE_PATTERN = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")
#: A temporary file older than this is left over from a process killed mid-write: no write
#: of ours takes that long, so it is never a file a live process is still writing.
STALE_TEMP_SECONDS = 3600.0


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True,
                       temp_dir: Path | None = None,
                       rename: Callable[[str, Path], None] | None = None) -> str:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename); return its sha256.

    The file gets the mode a plain ``open`` would give it (0666 less the umask), not the
    0600 of a temp file: results, snapshots and the Prometheus file are read by others
    (node_exporter runs as its own user). qcourier writes no secret to any file.

    ``durable=False`` skips the fsyncs: after a power cut the file may be old or absent,
    but never half-written (for caches, which can always be rebuilt).

    ``temp_dir`` (on the same file system) holds the temp file instead of ``path``'s
    directory, so that only the ``rename`` (default ``os.replace``) changes that directory.
    """
    import tempfile  # here, not at the top: a run that writes nothing starts faster

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if temp_dir is not None:
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=temp_dir or path.parent, prefix=f".{path.name}.",
                               suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        (rename or os.replace)(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if not durable:
        return hashlib.sha256(data).hexdigest()
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return hashlib.sha256(data).hexdigest()


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            line = next(x for x in fh if x.startswith("Umask:"))
        return int(line.split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)  # elsewhere: read by setting it, and put it back at once
        os.umask(mask)
        return mask


def remove_stale_temp_files(directories: list[Path],
                            older_than: float = STALE_TEMP_SECONDS) -> int:
    """Remove temporary files of :func:`atomic_write_bytes` that a killed process left.

    Only files directly in ``directories`` whose names match :data:`TEMP_FILE_PATTERN` and
    whose last change is more than ``older_than`` seconds ago; nothing else is touched.

    Returns:
        How many were removed.
    """
    removed = 0
    cutoff = time.time() - older_than
    for directory in directories:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if not (entry.name.startswith(".") and entry.name.endswith(".tmp")
                    and TEMP_FILE_PATTERN.fullmatch(entry.name)):
                continue
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                pass  # gone already, or not ours to remove
    return removed


def path_under(directory: Path, name: str, suffix: str = "") -> Path:
    """``directory / (name + suffix)``, checked to be a file directly in ``directory``.

    For paths built from ids that came from outside (a service's job id, a hash in a ledger
    line): an absolute name, a ``..`` or a separator would otherwise lead anywhere.

    Raises:
        QcourierError: the name would leave the directory.
    """
    from qcourier.errors import QcourierError

    leaf = f"{name}{suffix}"
    if (not name or "/" in leaf or "\\" in leaf or "\0" in leaf or leaf in (".", "..")
            or leaf.startswith("..")):
        raise QcourierError(f"refused to use {leaf!r} as a file name in {directory}: it is not "
                            "a plain file name")
    path = Path(directory) / leaf
    if path.parent != Path(directory):
        raise QcourierError(f"refused to use {leaf!r} as a file name in {directory}")
    return path


def sha256_file(path: Path) -> str:
    """The sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: Written into every directory qcourier creates for its output, so that a study run inside
#: the user's own experiment repository shows no untracked files (delete it to commit them).
GITIGNORE_TEXT = ("# Written by qcourier: its output is not committed by default.\n"
                  "# Delete this file to commit the ledger and results with your code.\n*\n")


def make_output_directory(directory: Path) -> None:
    """Create an output directory (and its parents); a new one gets a ``.gitignore`` of ``*``.

    Raises:
        OSError: it cannot be created.
    """
    directory = Path(directory)
    if directory.is_dir():
        return
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with open(directory / ".gitignore", "x", encoding="utf-8") as fh:
            fh.write(GITIGNORE_TEXT)
    except FileExistsError:  # another process made the directory at the same moment
        pass


def create_timestamped(directory: Path, prefix: str, extension: str, stamp: str,
                       data: bytes = b"") -> Path:
    """Create ``<prefix>_<stamp>[_<n>]<extension>`` in ``directory`` holding ``data``; never
    overwrite a file, and never show a reader a half-written one.

    The first free name is taken: the content is written to a temp file and published with
    ``os.link``, which fails if the name exists (so two writers in the same second get two
    names), then fsynced; ``n`` counts up from 1 on a clash.

    Raises:
        OSError: the directory is not writable, or 1000 names of that second are taken.
    """
    import tempfile

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{prefix}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        for n in range(1000):
            path = directory / f"{prefix}_{stamp}{'' if n == 0 else f'_{n}'}{extension}"
            try:
                os.link(tmp, path)
            except FileExistsError:
                continue
            _fsync_directory(directory)
            return path
        raise OSError(f"too many {prefix} files named for {stamp} in {directory}")
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

