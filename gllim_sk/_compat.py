"""The one place where gllim_sk imports scikit-learn's private helpers, and the few
array-API helpers that the standard lacks.

scikit-learn does not promise to keep its private helpers; if one moves, only this module
changes. Numpy arrays always take numpy's own functions (``xp`` is then the numpy module
itself), so that the numpy path runs exactly the code it always ran; other arrays (torch,
CuPy, array-api-strict) go through their array-API namespace.
"""

import sys

import numpy as np
from sklearn.base import _fit_context
from sklearn.externals import array_api_compat
from sklearn.utils._array_api import (
    _convert_to_numpy,
    _is_numpy_namespace,
    check_same_namespace,
    get_namespace,
    move_estimator_to,
    move_to,
)
from sklearn.utils._array_api import device as array_device
from sklearn.utils._param_validation import HasMethods, Hidden, Interval, Options, StrOptions

__all__ = [
    "_is_numpy_namespace",
    "check_same_namespace",
    "HasMethods", "Hidden", "Interval", "Options", "StrOptions", "_fit_context", "array_device",
    "array_namespace", "computes_with_numpy", "input_namespace",
    "linalg_errors",
    "concat", "copy", "einsum", "eye", "get_namespace", "move_estimator_to", "move_to",
    "permute", "reshape",
    "swap_last", "to_numpy", "zeros",
]


_NUMPY_TYPES = (np.ndarray, np.generic)


def array_namespace(*arrays):
    """The namespace of ``arrays``: the numpy module itself for numpy arrays."""
    # Called in the EM hot loop: numpy arrays must cost one type check each.
    for a in arrays:
        if type(a) is not np.ndarray and a is not None and not isinstance(a, _NUMPY_TYPES):
            return array_api_compat.array_namespace(
                *[b for b in arrays if b is not None and not isinstance(b, _NUMPY_TYPES)]
            )
    return np


def input_namespace(*arrays):
    """The namespace the inputs are computed in: numpy unless Array API dispatch is on
    and they are arrays of another library."""
    xp, is_array_api = get_namespace(*arrays)
    if not is_array_api or _is_numpy_namespace(xp):
        return np
    return xp


def computes_with_numpy(*arrays):
    """Whether the inputs are computed with numpy (numpy arrays, or dispatch off)."""
    return input_namespace(*arrays) is np


def to_numpy(a):
    """``a`` as a numpy array (copied to the host if it lives on a device)."""
    if a is None or isinstance(a, np.ndarray | np.generic | float | int):
        return a
    return _convert_to_numpy(a, array_namespace(a))


def einsum(xp, spec, *operands):
    """``einsum`` in namespace ``xp``; by broadcasting where the namespace has none."""
    if xp is np:
        return np.einsum(spec, *operands)
    native = getattr(xp, "einsum", None)
    if native is not None:
        return native(spec, *operands)
    inputs, output = spec.split("->")
    inputs = inputs.split(",")
    operands = list(operands)
    for i, term in enumerate(inputs):
        # A repeated index on the last two axes ("kii") takes their diagonal.
        if len(term) >= 2 and term[-1] == term[-2]:
            operands[i] = xp.linalg.diagonal(operands[i])
            inputs[i] = term[:-1]
        if len(set(inputs[i])) != len(inputs[i]):
            raise NotImplementedError(f"einsum {spec!r} without a native einsum")
    letters = sorted(set("".join(inputs)))
    product = None
    for term, operand in zip(inputs, operands, strict=True):
        order = [term.index(c) for c in letters if c in term]
        aligned = xp.permute_dims(operand, tuple(order))
        shape = []
        present = iter(aligned.shape)
        for c in letters:
            shape.append(next(present) if c in term else 1)
        aligned = xp.reshape(aligned, tuple(shape))
        product = aligned if product is None else product * aligned
    summed = [i for i, c in enumerate(letters) if c not in output]
    if summed:
        product = xp.sum(product, axis=tuple(summed))
    kept = [c for c in letters if c in output]
    return xp.permute_dims(product, tuple(kept.index(c) for c in output))


def swap_last(xp, a):
    """``a`` with its last two axes swapped."""
    return np.swapaxes(a, -1, -2) if xp is np else xp.matrix_transpose(a)


def reshape(xp, a, shape):
    return a.reshape(shape) if xp is np else xp.reshape(a, shape)


def permute(xp, a, axes):
    return a.transpose(axes) if xp is np else xp.permute_dims(a, axes)


def concat(xp, arrays, axis=0):
    return np.concatenate(arrays, axis=axis) if xp is np else xp.concat(arrays, axis=axis)


def copy(xp, a):
    return a.copy() if xp is np else xp.asarray(a, copy=True)


def zeros(xp, shape, like, dtype=None):
    """Zeros of ``shape`` with the dtype (or ``dtype``) and device of ``like``."""
    if xp is np:
        return np.zeros(shape, dtype=like.dtype if dtype is None else dtype)
    return xp.zeros(shape, dtype=like.dtype if dtype is None else dtype,
                    device=array_device(like))


def eye(xp, n, like):
    if xp is np:
        return np.eye(n)
    return xp.eye(n, dtype=like.dtype, device=array_device(like))


def linalg_errors():
    """The linear-algebra error classes of the array libraries in use: numpy's, and
    those of torch and CuPy when they are imported (a failed Cholesky raises them; an
    out-of-memory error is none of them and goes through)."""
    errors = [np.linalg.LinAlgError]
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "linalg"):
        errors.append(torch.linalg.LinAlgError)
    cupy = sys.modules.get("cupy")
    if cupy is not None and hasattr(cupy, "linalg"):
        errors.append(getattr(cupy.linalg, "LinAlgError", np.linalg.LinAlgError))
    return tuple(errors)
