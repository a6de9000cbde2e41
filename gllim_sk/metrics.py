"""Head-pose error metrics: per-angle mean absolute errors, scorers and result tables.

Angles are in degrees, one column per angle, in the order ``(pitch, yaw, roll)`` unless
told otherwise. The mean error is the average of the per-angle mean absolute errors,
as in the tables of Lathuilière et al. (CVPR 2017).
"""

import numbers
from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import make_scorer
from sklearn.utils.validation import check_array

__all__ = [
    "angle_errors",
    "mean_angle_error",
    "angle_error_scorer",
    "get_angle_scorer",
    "format_results_table",
]

DEFAULT_ANGLE_NAMES = ("pitch", "yaw", "roll")


def _reject_sparse(y, name):
    # np.asarray would turn a sparse matrix into a 0-d object array.
    if sp.issparse(y):
        check_array(y, accept_sparse=False, input_name=name)  # scikit-learn's TypeError


def _check_angles(y_true, y_pred, n_angles):
    """Validate two angle arrays: same shape ``(n, n_angles)``, finite. Returns float arrays."""
    arrays = []
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        _reject_sparse(y, name)
        try:
            arr = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a numeric array of angles: {exc}") from None
        if n_angles == 1 and arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[1] != n_angles:
            raise ValueError(
                f"{name} must have shape (n_samples, {n_angles}) with one column per angle, "
                f"got shape {arr.shape}."
            )
        if arr.shape[0] == 0:
            raise ValueError(f"{name} is empty (0 samples).")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinity.")
        arrays.append(arr)
    if arrays[0].shape[0] != arrays[1].shape[0]:
        raise ValueError(
            f"y_true and y_pred have different numbers of samples: {arrays[0].shape[0]} "
            f"and {arrays[1].shape[0]}."
        )
    return arrays


def _check_angle_names(angle_names):
    """``angle_names`` as a tuple of distinct str other than "mean", or a ValueError."""
    # A str is a sequence of str: ("yaw") without its comma would name three angles.
    if isinstance(angle_names, str):
        raise ValueError(
            f"angle_names must be a sequence of names, not the str {angle_names!r}; "
            f"for one angle pass ({angle_names!r},)."
        )
    names = tuple(angle_names)
    if not names or not all(isinstance(name, str) for name in names):
        raise ValueError(f"angle_names must be a non-empty sequence of str, got {angle_names!r}.")
    if "mean" in names or len(set(names)) != len(names):
        raise ValueError(f"angle_names must be distinct and not 'mean', got {names!r}.")
    return names


def _absolute_differences(y_true, y_pred, wrap):
    diff = y_pred - y_true
    if wrap:
        # Map to (-180, 180]: an error of 350 degrees is an error of 10 degrees.
        diff = 180.0 - np.mod(180.0 - diff, 360.0)
    return np.abs(diff)


def angle_errors(y_true, y_pred, *, angle_names=DEFAULT_ANGLE_NAMES, wrap=False):
    """Mean absolute error of each angle, and their mean.

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_angles)
        True angles in degrees, one column per name in ``angle_names``.
    y_pred : array-like of shape (n_samples, n_angles)
        Predicted angles in degrees.
    angle_names : sequence of str, default=("pitch", "yaw", "roll")
        Names of the columns. ``"mean"`` is reserved.
    wrap : bool, default=False
        Wrap each difference to (-180, 180] degrees before taking its absolute value, so
        that predicting 179 for -179 counts as an error of 2 degrees. Leave it off for
        angles restricted to (-90, 90), as in Biwi and AFLW2000.

    Returns
    -------
    errors : dict of str to float
        The mean absolute error of each angle, under its name, and ``"mean"``, the
        average of the per-angle errors, in degrees.

    Raises
    ------
    ValueError
        If the arrays do not have one column per angle, differ in length, are empty or
        hold non-finite values.

    Examples
    --------
    >>> from gllim_sk.metrics import angle_errors
    >>> y_true = [[10.0, 20.0, 0.0], [0.0, -30.0, 5.0]]
    >>> y_pred = [[12.0, 20.0, 1.0], [0.0, -24.0, 2.0]]
    >>> angle_errors(y_true, y_pred)
    {'pitch': 1.0, 'yaw': 3.0, 'roll': 2.0, 'mean': 2.0}
    >>> angle_errors([[179.0]], [[-179.0]], angle_names=("yaw",), wrap=True)
    {'yaw': 2.0, 'mean': 2.0}
    """
    names = _check_angle_names(angle_names)
    y_true, y_pred = _check_angles(y_true, y_pred, len(names))
    per_angle = _absolute_differences(y_true, y_pred, wrap).mean(axis=0)
    errors = {name: float(value) for name, value in zip(names, per_angle, strict=True)}
    errors["mean"] = float(per_angle.mean())
    return errors


def mean_angle_error(y_true, y_pred, *, wrap=False):
    """Average over the angles of the per-angle mean absolute errors, in degrees.

    Any number of angle columns is accepted (a 1-D array is one angle). Lower is better;
    use :data:`angle_error_scorer` for model selection.

    Parameters
    ----------
    y_true : array-like of shape (n_samples, n_angles) or (n_samples,)
        True angles in degrees.
    y_pred : array-like of the same shape as ``y_true``
        Predicted angles in degrees.
    wrap : bool, default=False
        Wrap differences to (-180, 180] degrees, see :func:`angle_errors`.

    Returns
    -------
    error : float
        The mean absolute error over all angles and samples.

    Examples
    --------
    >>> from gllim_sk.metrics import mean_angle_error
    >>> mean_angle_error([[10.0, 20.0, 0.0]], [[13.0, 20.0, -3.0]])
    2.0
    """
    _reject_sparse(y_true, "y_true")
    y_true_arr = np.asarray(y_true)
    n_angles = 1 if y_true_arr.ndim == 1 else (y_true_arr.shape[1] if y_true_arr.ndim == 2 else 0)
    if n_angles == 0:
        raise ValueError(
            f"y_true must have shape (n_samples, n_angles) or (n_samples,), got shape "
            f"{y_true_arr.shape}."
        )
    y_true, y_pred = _check_angles(y_true, y_pred, n_angles)
    return float(_absolute_differences(y_true, y_pred, wrap).mean())


def _single_angle_error(y_true, y_pred, *, column, n_angles, wrap=False):
    y_true, y_pred = _check_angles(y_true, y_pred, n_angles)
    return float(_absolute_differences(y_true[:, column], y_pred[:, column], wrap).mean())


def get_angle_scorer(angle="mean", *, angle_names=DEFAULT_ANGLE_NAMES, wrap=False):
    """A scikit-learn scorer for an angle error (negated, so that greater is better).

    Parameters
    ----------
    angle : str, default="mean"
        ``"mean"`` for the mean over all angles (:func:`mean_angle_error`), or one of
        ``angle_names`` for that angle alone.
    angle_names : sequence of str, default=("pitch", "yaw", "roll")
        Names of the target columns, used to find ``angle``.
    wrap : bool, default=False
        Wrap differences to (-180, 180] degrees, see :func:`angle_errors`.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y)``, the negated error in degrees, for ``scoring=`` in
        :class:`~sklearn.model_selection.GridSearchCV` or
        :func:`~sklearn.model_selection.cross_validate`.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.dummy import DummyRegressor
    >>> from gllim_sk.metrics import get_angle_scorer
    >>> X, y = np.zeros((2, 1)), np.array([[2.0, 4.0, 6.0], [-2.0, -4.0, -6.0]])
    >>> model = DummyRegressor(strategy="constant", constant=[0.0, 0.0, 0.0]).fit(X, y)
    >>> get_angle_scorer("yaw")(model, X, y)
    -4.0
    >>> get_angle_scorer()(model, X, y)
    -4.0
    """
    names = _check_angle_names(angle_names)
    if angle == "mean":
        return make_scorer(mean_angle_error, greater_is_better=False, wrap=wrap)
    if angle not in names:
        raise ValueError(f"angle must be 'mean' or one of {names!r}, got {angle!r}.")
    return make_scorer(
        _single_angle_error,
        greater_is_better=False,
        column=names.index(angle),
        n_angles=len(names),
        wrap=wrap,
    )


angle_error_scorer = make_scorer(mean_angle_error, greater_is_better=False)
"""Scorer of the mean absolute angle error (negated: greater is better).

For ``scoring=angle_error_scorer`` in :class:`~sklearn.model_selection.GridSearchCV`;
``-search.best_score_`` is then the mean error in degrees.
"""


def _error_row(name, errors, angle_names):
    """Return ``[v_1, ..., v_n, mean]`` (floats or None) for one method."""
    n = len(angle_names)
    if isinstance(errors, Mapping):
        missing = [a for a in angle_names if a not in errors]
        if missing:
            raise ValueError(f"results[{name!r}] lacks the angles {missing}.")
        values = [errors[a] for a in angle_names]
        mean = errors.get("mean")
    else:
        values = list(errors)
        if len(values) not in (n, n + 1):
            raise ValueError(
                f"results[{name!r}] must hold {n} errors ({', '.join(angle_names)}) or "
                f"{n + 1} with the mean, got {len(values)}."
            )
        mean = values[n] if len(values) == n + 1 else None
        values = values[:n]
    row = []
    for value in [*values, mean]:
        if value is None:
            row.append(None)
        elif isinstance(value, numbers.Real) and np.isfinite(value):
            row.append(float(value))
        else:
            raise ValueError(
                f"results[{name!r}] holds {value!r}; errors must be finite numbers or None."
            )
    if row[n] is None and None not in row[:n]:
        row[n] = float(np.mean(row[:n]))
    return row


def format_results_table(
    results, *, fmt="text", angle_names=DEFAULT_ANGLE_NAMES, decimals=2, method_header="Method"
):
    """Format per-method angle errors as a table like Table 1 of the paper.

    Columns: the method, then each angle (capitalised) and ``Mean``, in degrees. The best
    (lowest) value of each column is marked: bold in markdown, a trailing ``*`` in text.

    Parameters
    ----------
    results : dict of str to (dict or sequence), or sequence of (str, dict or sequence)
        For each method, in display order, its errors: the dict returned by
        :func:`angle_errors`, or a sequence of the per-angle errors optionally followed by
        the mean. A missing mean is the average of the angles. ``None`` marks a value
        that is not available (shown as ``/``, as in the paper; empty in CSV).
    fmt : {"text", "markdown", "csv"}, default="text"
        Aligned plain text, a GitHub-flavoured markdown table, or comma-separated values
        (no marking of the best values).
    angle_names : sequence of str, default=("pitch", "yaw", "roll")
        Angle keys, in column order.
    decimals : int, default=2
        Digits after the decimal point. Best values are found after rounding, so ties
        as displayed are all marked.
    method_header : str, default="Method"
        Header of the first column.

    Returns
    -------
    table : str
        The table, one line per method after the header, without a trailing newline.

    Examples
    --------
    >>> from gllim_sk.metrics import format_results_table
    >>> results = {
    ...     "(0, 0, 0)": [23.92, 28.50, 8.48],
    ...     "HOG-SVR": {"pitch": 8.50, "yaw": 6.45, "roll": 5.04, "mean": 6.66},
    ... }
    >>> print(format_results_table(results))
    Method     Pitch     Yaw   Roll    Mean
    (0, 0, 0)  23.92   28.50   8.48   20.30
    HOG-SVR     8.50*   6.45*  5.04*   6.66*
    >>> print(format_results_table(results, fmt="markdown"))
    | Method | Pitch | Yaw | Roll | Mean |
    |:--|--:|--:|--:|--:|
    | (0, 0, 0) | 23.92 | 28.50 | 8.48 | 20.30 |
    | HOG-SVR | **8.50** | **6.45** | **5.04** | **6.66** |
    """
    if fmt not in ("text", "markdown", "csv"):
        raise ValueError(f"fmt must be 'text', 'markdown' or 'csv', got {fmt!r}.")
    if not isinstance(decimals, numbers.Integral) or decimals < 0:
        raise ValueError(f"decimals must be a non-negative int, got {decimals!r}.")
    names = _check_angle_names(angle_names)
    items = list(results.items()) if isinstance(results, Mapping) else list(results)
    if not items:
        raise ValueError("results is empty: nothing to format.")
    rows = []
    for item in items:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise ValueError(
                "results must map method names to errors, or be a sequence of "
                f"(name, errors) pairs; got the item {item!r}."
            )
        rows.append((str(item[0]), _error_row(item[0], item[1], names)))

    header = [method_header, *(a.capitalize() for a in names), "Mean"]
    n_cols = len(names) + 1
    rounded = [[None if v is None else round(v, decimals) for v in row] for _, row in rows]
    best = []
    for col in range(n_cols):
        present = [r[col] for r in rounded if r[col] is not None]
        best.append(min(present) if present else None)

    def cell(value, col):
        if value is None:
            return {"text": "/ ", "markdown": "/", "csv": ""}[fmt]
        text = f"{value:.{decimals}f}"
        is_best = round(value, decimals) == best[col]
        if fmt == "markdown":
            return f"**{text}**" if is_best else text
        if fmt == "text":
            # A mark slot on every number keeps the decimal points aligned.
            return f"{text}*" if is_best else f"{text} "
        return text

    body = [[name, *(cell(v, c) for c, v in enumerate(row))] for name, row in rows]
    if fmt == "csv":
        # Quote names containing commas (e.g. "(0, 0, 0)"), RFC 4180 style.
        def quote(text):
            if any(ch in text for ch in ',"\n'):
                return '"' + text.replace('"', '""') + '"'
            return text

        return "\n".join(",".join(quote(c) for c in line) for line in [header, *body])
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|:--|" + "--:|" * n_cols]
        lines += ["| " + " | ".join(line) + " |" for line in body]
        return "\n".join(lines)
    header[1:] = [f"{title} " for title in header[1:]]
    widths = [max(len(line[c]) for line in [header, *body]) for c in range(len(header))]
    lines = [
        "  ".join(
            [line[0].ljust(widths[0])]
            + [text.rjust(width) for text, width in zip(line[1:], widths[1:], strict=True)]
        ).rstrip()
        for line in [header, *body]
    ]
    return "\n".join(lines)
