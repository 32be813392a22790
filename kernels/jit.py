"""How kernels are declared and called: Numba array types, JIT presets, input checks.

Every kernel module declares its signatures with these names (``jit.void(jit.f8_1d)``,
``**jit.NOGIL``), so one spelling means one type everywhere: ``<dtype>_<ndim>d`` is a
writable C-contiguous array (``f8_1d`` = float64[::1]), a ``_ro`` suffix its read-only
variant (LMDB views, snapshot arrays); dtype codes are NumPy's (``f8`` float64, ``i8``
int64, ``i4`` int32, ``u8`` uint64, ``u4`` uint32, ``u1`` uint8, ``b1`` bool). Scalars use
the same codes; ``f8_pair`` is a tuple of two float64.

The checks are the other half of the contract: a public wrapper validates what it hands
a kernel with these helpers (each names the argument and the rule in its message), so the
private kernels can assume their declared types.
"""

from __future__ import annotations

from typing import Literal, TypedDict

import numpy as np
from numba import types


class JitOptions(TypedDict, total=False):
    """The ``njit`` keywords a preset sets (typed, so ``**preset`` type-checks)."""

    cache: bool
    nogil: bool
    error_model: Literal["python", "numpy"]


# --------------------------------------------------------------------------- JIT presets

# Compiled once, loaded from the on-disk cache afterwards; the GIL is released, so threads
# can run kernels side by side.
NOGIL: JitOptions = {"cache": True, "nogil": True}
# As NOGIL, with NumPy's floating-point error model (x / 0 is inf or nan, not an exception,
# and no per-division check).
NOGIL_NUMPY_ERRORS: JitOptions = {"cache": True, "nogil": True, "error_model": "numpy"}
# Kernels that run for about a microsecond inside a gRPC handler keep the GIL: releasing it
# invites another thread (the commit writer, grpc's poller) to take it, and the reply then
# waits tens of microseconds to get it back (measured with bench/rpc_floor.py).
GIL_NUMPY_ERRORS: JitOptions = {"cache": True, "nogil": False, "error_model": "numpy"}
# As GIL_NUMPY_ERRORS with Python's error model (a kernel whose semantics include it).
GIL: JitOptions = {"cache": True, "nogil": False}

# --------------------------------------------------------------------------- Numba types

void = types.void
b1 = types.boolean
f8 = types.float64
i8 = types.int64
u8 = types.uint64
u1 = types.uint8


def array(dtype: types.Type, ndim: int, readonly: bool = False) -> types.Array:
    """A C-contiguous array type (what every kernel takes)."""
    return types.Array(dtype, ndim, "C", readonly=readonly)


f8_1d = array(f8, 1)
f8_2d = array(f8, 2)
f8_3d = array(f8, 3)
i8_1d = array(i8, 1)
i8_2d = array(i8, 2)
u8_1d = array(u8, 1)
f8_1d_ro = array(f8, 1, readonly=True)
f8_2d_ro = array(f8, 2, readonly=True)
i8_1d_ro = array(i8, 1, readonly=True)
i8_2d_ro = array(i8, 2, readonly=True)
i4_1d_ro = array(types.int32, 1, readonly=True)
i4_2d_ro = array(types.int32, 2, readonly=True)
u4_2d_ro = array(types.uint32, 2, readonly=True)
u1_1d = array(u1, 1)
u1_1d_ro = array(u1, 1, readonly=True)
u1_2d_ro = array(u1, 2, readonly=True)
f8_pair = types.UniTuple(f8, 2)

# --------------------------------------------------------------------------- input checks


def readonly(a: np.ndarray) -> np.ndarray:
    """A read-only C-contiguous view of ``a`` (copied only when its layout demands it)."""
    a = np.ascontiguousarray(a)
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def mask_array(mask: object, name: str, n: int) -> np.ndarray:
    """A bool or uint8 mask of shape ``(n,)`` as C-contiguous uint8 (bool is viewed)."""
    m = np.asarray(mask)
    if m.dtype == np.bool_:
        m = m.view(np.uint8)
    if m.dtype != np.uint8 or m.shape != (n,):
        raise ValueError(f"{name}: must be bool or uint8 of shape ({n},), got {m.dtype} "
                         f"{m.shape}")
    return np.ascontiguousarray(m)


def float_vector(v: object, name: str, n: int) -> np.ndarray:
    """A finite float64 vector of shape ``(n,)``, C-contiguous."""
    a = np.asarray(v)
    if a.dtype != np.float64 or a.shape != (n,):
        raise ValueError(f"{name}: must be float64 of shape ({n},), got {a.dtype} {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: must be finite (no NaN or inf)")
    return np.ascontiguousarray(a)


def typed_array(
    arr: object, name: str, dtype: type, ndim: int, cast_int: bool = False
) -> np.ndarray:
    """``arr`` as a C-contiguous array of ``dtype`` and ``ndim`` (``cast_int``: any integer
    dtype is converted to an integer ``dtype``)."""
    a = np.asarray(arr)
    if cast_int and a.dtype.kind in "iu" and a.dtype != dtype:
        a = a.astype(dtype)
    if a.dtype != dtype:
        raise ValueError(f"{name}: dtype must be {np.dtype(dtype).name}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: must be {ndim}-D, got shape {a.shape}")
    return np.ascontiguousarray(a)


def frozen_array(arr: object, name: str, dtype: type, ndim: int) -> np.ndarray:
    """A read-only, C-contiguous, finite array (copied only when dtype/layout demand it)."""
    a = typed_array(arr, name, dtype, ndim)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: must be finite (no NaN or inf)")
    return readonly(a)


def float_array(a: np.ndarray, name: str, ndim: int) -> np.ndarray:
    """``a`` itself, if it is a float64 NumPy array of ``ndim`` dimensions, C-contiguous
    (no conversion: the per-transaction paths must not copy by accident)."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != np.float64:
        raise ValueError(f"{name} must be float64, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    return a
