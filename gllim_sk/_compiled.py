"""Where the compiled kernels run: numba's (the ``fast`` extra), where it is installed.

numpy runs the inversion's per-observation algebra as many operations on arrays of
(rows, components): each is quick, but there are dozens per block of rows, each a pass
over memory and a call that holds the GIL. The kernels of
:mod:`gllim_sk._numba_kernels` do the same arithmetic in one pass, releasing the GIL
(threads run them in parallel). They are compiled on first use (cached on disk where
the package's folder or the user's cache is writable), and only for calls large enough
to repay that. ``GLLIM_SK_NUMBA=0`` in the environment turns them off; the results
agree with the numpy code to rounding.
"""

import importlib.util
import os
import threading
import warnings

import numpy as np

# Work (rows times components) below which each kernel's numpy code runs instead:
# compiling the kernels (or loading them from the cache) once per process costs more
# than a small call saves.
MIN_WORK = {"noisy_diagonal_rows": 100_000, "mixture_moments": 100_000, "merge_rows": 20_000}
# Rows per block of the noisy-rows kernel: its work arrays (entries x rows) stay in cache.
_BLOCK_ROWS = 64

_lock = threading.Lock()
_module = []


def _kernels():
    """The module of compiled kernels, or None (numba missing, broken or turned off)."""
    with _lock:
        if not _module:
            _module.append(_import_kernels())
        return _module[0]


def _import_kernels():
    if os.environ.get("GLLIM_SK_NUMBA", "1") == "0" or importlib.util.find_spec("numba") is None:
        return None
    try:
        from . import _numba_kernels
    except ImportError as error:  # installed, but not for this numpy (or broken)
        warnings.warn(f"numba could not be imported ({error}); gllim_sk runs its numpy "
                      "code instead.", RuntimeWarning, stacklevel=5)
        return None
    return _numba_kernels


def kernel(name, work):
    """The compiled kernel ``name`` of :mod:`gllim_sk._numba_kernels` for a call of
    ``work`` rows times components, or None where the numpy code runs."""
    if work < MIN_WORK[name]:
        return None
    module = _kernels()
    return None if module is None else getattr(module, name)


def run_noisy_diagonal(kernel, XcT, SgT, sigma_g, inv_g, Az, pairs, means_x, c, offset, det,
                       quad, means, covs):
    """Run the ``noisy_diagonal_rows`` kernel on float64 arrays, writing ``det``,
    ``quad`` (n, K), ``means`` (n, K, L) and ``covs`` (n, K, L, L)."""
    def ready(a):
        return np.ascontiguousarray(a, dtype=np.float64)

    kernel(ready(XcT), ready(SgT), ready(sigma_g), ready(inv_g), ready(Az), ready(pairs),
           ready(means_x), ready(c), ready(offset), det, quad, means, covs, _BLOCK_ROWS)
