import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run on CPU under the interpreter
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One thread: on a shared 2-core machine two OpenMP threads per process oversubscribe and run up to
# 10x slower; it also makes results bitwise repeatable. Subprocesses (notebooks, torchrun) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from jaxtyping import install_import_hook

# The shapes the jaxtyping annotations state are checked at every call in the test suite (tests/shapecheck.py),
# so an annotation that lies fails a test. Installed before the packages are first imported; INTERP_SHAPECHECK=0
# turns it off.
if os.environ.get("INTERP_SHAPECHECK", "1") != "0":
    import tests.shapecheck  # noqa: F401  (the hook names it by its dotted path)

    install_import_hook(tests.shapecheck.checked_modules(), "tests.shapecheck.check_shapes")

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from interp.graph.planted import PLANTED_SHAPE
from interp.models import load_model

# the tiny random GQA model of the tests: the planted-circuit model's shape (3 layers, GQA 4:2, rotary, gated MLP)
TINY_GQA = dict(PLANTED_SHAPE)


@pytest.fixture(scope="session")
def model():
    """The bundled SmolLM2-135M-Instruct (converted once, then loaded from the safetensors cache)."""
    torch.set_grad_enabled(True)
    return load_model()


@pytest.fixture(scope="session")
def tiny_model():
    """A random 3-layer Llama-style model with grouped-query attention, for fast exact checks."""
    return load_model(TINY_GQA, seed=0)


@pytest.fixture
def unchecked_shapes():
    """For a test that passes a wrong shape on purpose, to see the function's own error: no shape check."""
    from tests.shapecheck import shapes_unchecked

    with shapes_unchecked():
        yield
