"""The activation store: sharded, checksummed safetensors of chosen sites over a corpus, resumable.

`build_store` (writer) fills one; `open_store` / `ActivationStore` (reader) read it. The reader knows
nothing of the writer, so the package has no import cycle.
"""

from interp.fileio import atomic_write_json as write_json_atomic
from interp.fileio import file_sha256
from interp.store.reader import (
    FORMAT_VERSION,
    MANIFEST,
    ActivationStore,
    model_fingerprint,
    open_store,
    shard_name,
    site_key,
)
from interp.store.writer import LOCK_FILE, build_store, check_store_dir, store_lock

__all__ = [
    "FORMAT_VERSION",
    "LOCK_FILE",
    "MANIFEST",
    "ActivationStore",
    "build_store",
    "check_store_dir",
    "file_sha256",
    "model_fingerprint",
    "open_store",
    "shard_name",
    "site_key",
    "store_lock",
    "write_json_atomic",
]
