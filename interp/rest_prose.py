"""Moved to `interp.corpus.rest_prose` (kept for one release)."""

from interp.corpus.rest_prose import *  # noqa: F401,F403
from interp.corpus.rest_prose import Section, inline_to_text, rest_to_sections  # noqa: F401
