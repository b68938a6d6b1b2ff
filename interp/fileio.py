"""Files written so that a killed run never leaves half of one, and their checksums.

Every write of a result, manifest or checkpoint in the toolkit goes through here: a temporary file
in the same folder, flushed and fsynced, then an atomic rename over the target.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # reading the umask means setting it; restored at once
CHUNK_BYTES = 1 << 20  # file_sha256 reads this much at a time


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error it replaces `path` atomically.

    For writers that want a file name (torch.save, DataFrame.to_parquet, safetensors): a kill or an
    exception inside the block leaves `path` as it was and no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results should read like any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write data to path via a temporary file in the same folder and an atomic rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data, *, indent: int | None = 1) -> Path:
    """JSON written atomically: a reader or a resumed run sees the old file or the new, never half of one."""
    return atomic_write_text(path, json.dumps(data, indent=indent))


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in CHUNK_BYTES pieces (shards are ~150 MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()
