"""Head-pose datasets: synthetic heads (built in), and loaders for Biwi and AFLW2000-3D.

Every function returns a :class:`~sklearn.utils.Bunch` with the same fields:

- ``images``: uint8 array of shape (n, H, W, 3);
- ``target``: float array of shape (n, 3), the (pitch, yaw, roll) in degrees;
- ``subject``: int array of shape (n,), the person shown in each image;
- ``target_names``: ``["pitch", "yaw", "roll"]``;
- ``DESCR``: a description. Loaders add ``filenames`` (and ``sequence`` for Biwi).

Angle convention (shared by all three; see :func:`make_head_poses`): pitch > 0 looks up,
yaw > 0 turns the face toward the image's left, roll > 0 tilts the head clockwise in the
image. These are the signs of the public Biwi benchmarks.

Splitting by person
-------------------
Head-pose models must be tested on people they have not seen. Pass ``subject`` as the
``groups`` of scikit-learn's group splitters, and hold out a validation part the same way:

>>> from sklearn.model_selection import GroupKFold, GroupShuffleSplit
>>> from gllim_sk.datasets import make_head_poses
>>> data = make_head_poses(200, image_size=32, n_subjects=10, random_state=0)
>>> outer = GroupShuffleSplit(n_splits=1, test_size=0.3, random_state=0)
>>> rest, test = next(outer.split(data.images, groups=data.subject))
>>> inner = GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=0)
>>> train, val = next(inner.split(rest, groups=data.subject[rest]))
>>> train, val = rest[train], rest[val]
>>> bool(set(data.subject[train]) & set(data.subject[test]))
False

:func:`train_val_test_split_by_subject` does these two draws in one call;
``GroupKFold(n_splits=5).split(X, y, groups=data.subject)`` gives cross-validation folds
over people, also for ``GridSearchCV(..., cv=GroupKFold(5)).fit(X, y, groups=...)``.
"""

from ._mechanism import make_affine_mixture_images
from ._real import BIWI_PERSON_OF_SEQUENCE, biwi_pose_to_angles, load_aflw2000, load_biwi
from ._split import train_val_test_split_by_subject
from ._synthetic import make_head_poses, render_head, rotation_matrix

__all__ = [
    "BIWI_PERSON_OF_SEQUENCE",
    "biwi_pose_to_angles",
    "load_aflw2000",
    "load_biwi",
    "make_affine_mixture_images",
    "make_head_poses",
    "render_head",
    "rotation_matrix",
    "train_val_test_split_by_subject",
]
