"""Moved to `interp.store.writer` (kept for one release)."""

from interp.store.writer import *  # noqa: F401,F403
from interp.store.writer import LOCK_FILE, build_store, check_store_dir, store_lock  # noqa: F401
