"""Cholesky factorizations in place through LAPACK's potrf, with Python's interpreter lock released.

numpy's and torch's batched factorizations copy each matrix into column order and back, which
costs several times the factorization itself on the large Hermitian blocks of a conv certificate.
Here LAPACK works on the caller's memory: the routine is SciPy's (``scipy.linalg.cython_lapack``,
the interface SciPy exports for compiled callers), called through ctypes, which releases the
interpreter lock, so factorizations on two threads run side by side. SciPy is imported on first
use; callers that limit BLAS threads call load() first, as thread limits reach loaded libraries only.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import numpy as np

_ROUTINES = {np.dtype(np.complex128): "zpotrf", np.dtype(np.float64): "dpotrf"}

Potrf = Callable[..., None]


@functools.cache
def _potrf(name: str) -> Potrf | None:
    """LAPACK's ``name`` (s/d/c/z potrf) as a ctypes function, or None where SciPy does not export it."""
    try:
        from scipy.linalg import cython_lapack
    except ImportError:
        return None
    capsule = getattr(cython_lapack, "__pyx_capi__", {}).get(name)
    if capsule is None:
        return None
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    signature = get_name(capsule)
    # potrf(char *uplo, int *n, T *a, int *lda, int *info): 32-bit ints, as ctypes is told below.
    if signature is None or not signature.startswith(b"void (char *, int *, ") or not signature.endswith(b", int *, int *)"):
        return None
    address = get_pointer(capsule, signature)
    if not address:
        return None
    # potrf(uplo, n, a, lda, info), every argument by reference (Fortran's convention).
    c_int_p = ctypes.POINTER(ctypes.c_int)
    prototype = ctypes.CFUNCTYPE(None, ctypes.c_char_p, c_int_p, ctypes.c_void_p, c_int_p, c_int_p)
    return prototype(address)


def load() -> bool:
    """Load SciPy's LAPACK now (a quarter second), so that thread limits set next apply to it too."""
    return _potrf("zpotrf") is not None


def available(dtype: np.dtype) -> bool:
    """Whether in-place factorizations of this dtype (float64 or complex128) are possible here."""
    name = _ROUTINES.get(np.dtype(dtype))
    return name is not None and _potrf(name) is not None


def factor_in_place(batch: np.ndarray) -> np.ndarray:
    """Factor each Hermitian matrix of a C-contiguous batch in place; whether each factorization completed.

    LAPACK reads memory in column order, so it sees each matrix transposed and factors the
    Hermitian matrix held in the row-major lower triangle, conjugated: the same eigenvalues and the
    same rounding analysis as factoring that matrix itself. A factorization counts as completed
    when LAPACK reports success and every pivot is finite and positive (some builds let a NaN pivot
    pass). Afterwards each matrix holds its factor in that triangle and input elsewhere.
    """
    name = _ROUTINES.get(batch.dtype)
    routine = None if name is None else _potrf(name)
    if routine is None:
        raise ValueError(f"no in-place LAPACK factorization for {batch.dtype} here (float64 or complex128 with SciPy's LAPACK; check available() first)")
    if not batch.flags.c_contiguous:
        raise ValueError("the batch must be C-contiguous to be factored in place")
    n = batch.shape[-1]
    mats = batch.reshape(-1, n, n)
    size, info = ctypes.c_int(n), ctypes.c_int(0)
    done = np.zeros(mats.shape[0], dtype=bool)
    stride = mats.strides[0]
    base = mats.ctypes.data
    for i in range(mats.shape[0]):
        routine(b"U", ctypes.byref(size), base + i * stride, ctypes.byref(size), ctypes.byref(info))
        done[i] = info.value == 0
    pivots = np.diagonal(mats, axis1=-2, axis2=-1).real
    with np.errstate(invalid="ignore"):
        return done & np.isfinite(pivots).all(axis=-1) & (pivots > 0).all(axis=-1)
