"""The run-time check of the toolkit's jaxtyping annotations in the test suite.

`conftest.py` installs `jaxtyping.install_import_hook(checked_modules(), "tests.shapecheck.check_shapes")`:
every function and dataclass of interp, sae and circuits (less the Triton kernels) is wrapped by `jaxtyping.jaxtyped`, which binds the named
dimensions across a call's arguments and return value, and hands the check to `check_shapes` below. It checks
what the jaxtyping annotations state (dtype kind and shape, `Float[Tensor, "batch pos"]`, also inside
`X | None` and fixed-length tuples) and nothing else: the other annotations document what a function
accepts after its own coercion (a list where a tuple is stored, a str or a Site), and the functions check
those themselves with errors that speak to the user.

A test that hands a function a wrong shape on purpose, to see the function's own error, uses the
`unchecked_shapes` fixture, which switches the check off for that test only.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import types
import typing
from pathlib import Path

from jaxtyping import AbstractArray

ENABLED = [True]
ROOT = Path(__file__).resolve().parents[1]
UNCHECKED = ("interp.kernels",)  # Triton's @jit reads the kernel's source: a wrapped kernel no longer compiles


def checked_modules() -> list[str]:
    """Every module and subpackage of interp, sae and circuits, less UNCHECKED (the hook matches by prefix)."""
    names = []
    for package in ("interp", "sae", "circuits"):
        for path in sorted((ROOT / package).iterdir()):
            if path.name.startswith("_") or not (path.suffix == ".py" or (path / "__init__.py").is_file()):
                continue
            name = f"{package}.{path.stem}"
            if name not in UNCHECKED:
                names.append(name)
    return names


@contextlib.contextmanager
def shapes_unchecked():
    """Inside the block, no shape check: for a call that passes a wrong shape on purpose, to see the function's own error."""
    before, ENABLED[0] = ENABLED[0], False
    try:
        yield
    finally:
        ENABLED[0] = before


def _is_array_hint(hint) -> bool:
    return isinstance(hint, type) and issubclass(hint, AbstractArray)


def _matches(value, hint) -> bool | None:
    """True / False where `hint` states a shape; None where it does not (nothing to check)."""
    if _is_array_hint(hint):
        return isinstance(value, hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if not any(_is_array_hint(a) for a in args):
            return None
        for member in args:
            if _is_array_hint(member):
                if isinstance(value, member):
                    return True
            elif member is type(None):
                if value is None:
                    return True
            else:
                try:
                    if isinstance(value, typing.get_origin(member) or member):
                        return True
                except TypeError:
                    return True  # a member isinstance cannot decide: not ours to judge
        return False
    if origin is tuple and args and args[-1] is not Ellipsis and any(_is_array_hint(a) for a in args):
        if not isinstance(value, tuple) or len(value) != len(args):
            return False
        return all(_matches(v, a) is not False for v, a in zip(value, args))
    return None


def check_shapes(fn):
    """A jaxtyping `typechecker`: raise TypeError when an argument or the return value breaks its shape annotation."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that cannot be resolved here: nothing this checker can read
        return fn
    checked = {name: hint for name, hint in hints.items() if _matches(None, hint) is not None or _is_array_hint(hint)}
    if not checked:
        return fn
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if ENABLED[0]:
            bound = signature.bind(*args, **kwargs)
            for name, value in bound.arguments.items():
                if name in checked and _matches(value, checked[name]) is False:
                    shape = tuple(value.shape) if hasattr(value, "shape") else type(value).__name__
                    raise TypeError(
                        f"{fn.__qualname__}: argument {name!r} is {getattr(value, 'dtype', '')} {shape}, "
                        f"which breaks its annotation {checked[name]}"
                    )
        return fn(*args, **kwargs)

    return wrapper
