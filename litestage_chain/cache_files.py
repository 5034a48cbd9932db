"""Cache files that heal: locks that die with their owner, atomic writes, and artifacts verified before use.

Why: every cache here (converted weights, quantised weights, the compiled kernel) is read by later processes that
trust it. A process killed half-way, two processes writing at once, or a damaged disk must never leave something
that later hangs (a lock file nobody will remove), crashes (a truncated shared object mapped into memory) or
answers from damaged weights. So:

- `locked(path)` takes an exclusive `flock` on a lock file. The kernel releases it when the owning process exits,
  however it exits (kill -9 included), so a dead owner never blocks anyone.
- `atomic_write_text` writes a temporary file and renames it over the target: readers see the old or the new file,
  never a half-written one.
- `write_manifest` records each artifact's size and sha256 when it is written; `check_manifest` verifies them
  before use. Hashing gigabytes on every load would not be cheap, so the manifest also keeps each file's stat stamp
  (inode, size, mtime, ctime): while the stamp is unchanged the file has not been written since it was hashed
  (ctime cannot be set back by any user call), and only a file whose stamp moved is hashed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from litestage_chain.errors import LiteStageError

try:  # POSIX; elsewhere the locks are no-ops (a single process per cache is then assumed)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
_CHUNK = 8 * 1024 * 1024


class CacheError(LiteStageError):
    """The cache directory cannot be used (it is a file, or it is not writable where a write is needed)."""


def unusable_cache(path: Path, error: OSError) -> CacheError:
    """A `CacheError` naming the path and the OS reason, with the way out (another `LITESTAGE_CACHE`)."""
    reason = error.strerror or type(error).__name__
    return CacheError(
        f"cannot use the cache at {path} ({reason}); set LITESTAGE_CACHE to a writable directory"
    )


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on `lock_path` for the block; yields whether a lock is actually held.

    Waits while another live process holds it. A lock whose owner died is free at once: `flock` locks belong to
    the open file, which the kernel closes with the process. Where the lock file cannot be created (a read-only
    cache) the block runs unlocked: nobody can write there either.
    """
    if fcntl is None:
        yield False
        return
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+b")  # noqa: SIM115 - closed below, after the lock is released
    except OSError as error:
        logger.debug("no lock at %s (%s); continuing unlocked", lock_path, error)
        yield False
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield True
    finally:
        handle.close()  # closing releases the flock


@contextlib.contextmanager
def locked_open(path: Path, flags: int) -> Iterator[int]:
    """`os.open(path, flags)` holding an exclusive `flock` on the file itself, for the block; yields the descriptor.

    No lock file is left beside `path` (reading a committed results folder must not write to it). If the file was
    replaced (an atomic rewrite) while this process waited, the new file is opened and locked instead, so no one
    writes to a file that is no longer there.
    """
    while True:
        fd = os.open(path, flags, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            if fcntl is None or os.fstat(fd).st_ino == path.stat().st_ino:
                break
        except FileNotFoundError:  # replaced and not yet renamed in: try again
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)  # closing releases the flock


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def write_manifest(manifest: Path, files: Iterable[Path], extra: Mapping[str, Any] | None = None) -> None:
    """Record size, sha256 and stat stamp of `files` (paths under the manifest's folder) in `manifest`."""
    base = manifest.parent
    entries = {}
    for path in sorted(files):
        entries[path.relative_to(base).as_posix()] = {
            "size": path.stat().st_size, "sha256": file_sha256(path), "stamp": _stamp(path),
        }
    payload = {**(extra or {}), "manifest_version": MANIFEST_VERSION, "files": entries}
    atomic_write_text(manifest, json.dumps(payload, indent=1, sort_keys=True) + "\n")


def check_manifest(manifest: Path) -> str | None:
    """`None` if every file `manifest` lists is present with its recorded size and sha256, else what is wrong.

    A file whose stat stamp still matches the one recorded with its hash is not hashed again; one whose stamp moved
    is hashed, and if its bytes are still the recorded ones its new stamp is saved (when the cache is writable).
    """
    try:
        payload = json.loads(manifest.read_text(encoding="utf-8"))
        files = payload["files"]
        if payload.get("manifest_version") != MANIFEST_VERSION or not isinstance(files, dict) or not files:
            raise KeyError("files")
    except FileNotFoundError:
        return f"{manifest.name} is missing"
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return f"{manifest.name} is unreadable or records no checksums (written by an older version?)"
    restamped = False
    for name, entry in files.items():
        path = manifest.parent / name
        try:
            stamp = _stamp(path)
        except OSError:
            return f"{name} is missing"
        if stamp[1] != entry.get("size"):
            return f"{name} is {stamp[1]} bytes, {entry.get('size')} were written"
        if stamp == entry.get("stamp"):
            continue
        if file_sha256(path) != entry.get("sha256"):
            return f"{name} does not match the sha256 recorded when it was written"
        entry["stamp"] = stamp
        restamped = True
    if restamped:
        with contextlib.suppress(OSError):  # a read-only cache is verified again next time
            atomic_write_text(manifest, json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return None


def manifest_of(artifact: Path) -> Path:
    """The sidecar manifest of a single-file artifact."""
    return artifact.with_name(artifact.name + ".check.json")
