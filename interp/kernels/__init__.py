"""Triton kernels, each beside the torch twin it must equal; one dispatch rule for all of them."""

from __future__ import annotations

import os

from torch import Tensor


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(t: Tensor) -> bool:
    """The kernel on CUDA; the twin elsewhere. INTERP_DISABLE_TRITON=1 turns kernels off; INTERP_FORCE_TRITON=1
    under TRITON_INTERPRET=1 runs them on CPU, which is how tests reach them."""
    if os.environ.get("INTERP_DISABLE_TRITON") == "1" or not triton_available():
        return False
    forced = os.environ.get("INTERP_FORCE_TRITON") == "1" and os.environ.get("TRITON_INTERPRET") == "1"
    return t.is_cuda or forced
