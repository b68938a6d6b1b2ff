"""Moved to `interp.corpus.fetch` (kept for one release)."""

from interp.corpus.fetch import *  # noqa: F401,F403
from interp.corpus.fetch import ROUTES, build_corpus, documents_of, fetch_routes  # noqa: F401
