"""Splitting a head-pose dataset by person."""

import numbers

import numpy as np
from sklearn.model_selection import GroupShuffleSplit
from sklearn.utils import check_random_state

__all__ = ["train_val_test_split_by_subject"]


def _check_fraction(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}.")
    return float(value)


def train_val_test_split_by_subject(subject, *, test_size=0.2, val_size=0.1, random_state=None):
    """Indices of a train / validation / test split in which no person appears twice.

    Built on :class:`~sklearn.model_selection.GroupShuffleSplit`: first the test people
    are drawn, then the validation people among the rest. Fractions count people, not
    images, as in the group splitters.

    Parameters
    ----------
    subject : array-like of shape (n_samples,)
        Person id of each sample (the ``subject`` field of the datasets).
    test_size : float, default=0.2
        Fraction of the people held out for testing.
    val_size : float, default=0.1
        Fraction of all people held out for validation (early stopping, model selection);
        0 gives an empty validation set.
    random_state : int, RandomState instance or None, default=None
        Controls the draw.

    Returns
    -------
    train, val, test : ndarray of int
        Sorted sample indices of the three parts.

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk.datasets import train_val_test_split_by_subject
    >>> subject = np.repeat(np.arange(10), 3)
    >>> train, val, test = train_val_test_split_by_subject(subject, random_state=0)
    >>> len(train), len(val), len(test)
    (21, 3, 6)
    >>> set(subject[train]) & set(subject[test]), set(subject[val]) & set(subject[test])
    (set(), set())

    The same with scikit-learn alone, e.g. for cross-validation over people:

    >>> from sklearn.model_selection import GroupKFold
    >>> folds = GroupKFold(n_splits=5).split(subject, groups=subject)
    >>> all(not set(subject[tr]) & set(subject[te]) for tr, te in folds)
    True
    """
    subject = np.asarray(subject)
    if subject.ndim != 1 or subject.size == 0:
        raise ValueError(f"subject must be a non-empty 1-D array, got shape {subject.shape}.")
    test_size = _check_fraction(test_size, "test_size")
    val_size = _check_fraction(val_size, "val_size")
    if test_size + val_size >= 1:
        raise ValueError(f"test_size + val_size must be < 1, got {test_size} + {val_size}.")
    people = np.unique(subject)
    n_test = int(round(test_size * len(people)))
    n_val = int(round(val_size * len(people)))
    if (
        (test_size > 0 and n_test == 0)
        or (val_size > 0 and n_val == 0)
        or (n_test + n_val >= len(people))
    ):
        raise ValueError(
            f"Cannot split {len(people)} people into test_size={test_size} and "
            f"val_size={val_size} with at least one person in each non-empty part and one "
            "left for training."
        )
    index = np.arange(subject.size)
    rng = check_random_state(random_state)  # one generator drives both draws
    if n_test:
        outer = GroupShuffleSplit(n_splits=1, test_size=n_test, random_state=rng)
        rest, test = next(outer.split(index, groups=subject))
    else:
        rest, test = index, index[:0]
    if n_val:
        inner = GroupShuffleSplit(n_splits=1, test_size=n_val, random_state=rng)
        train_pos, val_pos = next(inner.split(rest, groups=subject[rest]))
        train, val = rest[train_pos], rest[val_pos]
    else:
        train, val = rest, index[:0]
    return np.sort(train), np.sort(val), np.sort(test)
