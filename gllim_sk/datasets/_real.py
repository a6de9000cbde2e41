"""Loaders for the real head-pose datasets: Biwi Kinect Head Pose and AFLW2000-3D.

Neither dataset can be downloaded automatically (both need a licence agreement): fetch
them from their authors and point ``data_home`` at the extracted folders. Decoded face
crops are cached in ``data_home`` (an ``.npz`` keyed by the crop parameters and by the
names, sizes and dates of the source files), so only the first load is slow.
"""

import hashlib
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from sklearn.utils import Bunch

from .._files import atomic_write
from ._synthetic import TARGET_NAMES

__all__ = ["BIWI_PERSON_OF_SEQUENCE", "biwi_pose_to_angles", "load_aflw2000", "load_biwi"]

# 2: 16-bit gray frames are scaled to 8 bits (version 1 cached them clipped to white).
_CACHE_VERSION = 2

# Who is in each Biwi sequence folder, after the database's head templates: F01-F06 are
# persons 1-6, M01-M14 persons 7-20. Folders 15, 18, 21 and 22 re-record F03, F05, F02
# and M01.
_BIWI_TEMPLATES = (
    "F01 F02 F03 F04 F05 F06 M01 M02 M03 M04 M05 M06 M07 M08 "
    "F03 M09 M10 F05 M11 M12 F02 M01 M13 M14"
).split()
_PERSON_IDS = {name: i + 1 for i, name in enumerate(sorted(set(_BIWI_TEMPLATES)))}
BIWI_PERSON_OF_SEQUENCE = {
    seq: _PERSON_IDS[name] for seq, name in enumerate(_BIWI_TEMPLATES, start=1)
}
"""Person id (1-20) of each Biwi sequence folder (1-24)."""


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------
def _check_image_size(image_size):
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise TypeError(f"image_size must be an int, got {type(image_size).__name__}.")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}.")
    return int(image_size)


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow is an optional dependency
        raise ImportError(
            "Reading the real datasets needs Pillow: pip install 'gllim_sk[image]'."
        ) from exc
    return Image


def _to_8bit_gray(img):
    """16-bit (or wider) gray levels scaled to 8 bits; Pillow's convert would clip them."""
    Image = _pil()
    values = np.asarray(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):
        values = values / 257.0  # 65535 -> 255
    elif values.size and not (
        np.all(np.isfinite(values)) and 0 <= values.min() and values.max() <= 255
    ):
        raise ValueError(
            f"its {img.mode!r} gray levels span [{values.min()}, {values.max()}], of unknown "
            "bit depth; save it with 8 or 16 bits per channel."
        )
    return Image.fromarray(np.round(values).astype(np.uint8))


def _read_rgb(path):
    """Decode an image file to an RGB PIL image, with an error naming the file."""
    Image = _pil()
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode.startswith("I") or img.mode == "F":
                return _to_8bit_gray(img).convert("RGB")
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"Cannot decode the image {path}: {exc}") from exc


def _square_crop(img, centre_x, centre_y, side, image_size):
    """Square crop (zero-padded where it leaves the image), resized to image_size."""
    Image = _pil()
    half = side / 2.0
    box = tuple(
        int(round(c)) for c in (centre_x - half, centre_y - half, centre_x + half, centre_y + half)
    )
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        raise ValueError(f"the face crop is degenerate ({side:.1f} pixels wide)")
    crop = img.crop(box)  # Pillow fills the part outside the image with black
    crop = crop.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(crop, dtype=np.uint8)


def _fingerprint(files, root, params):
    """Hash of the crop parameters and of every source file's name, size and date."""
    digest = hashlib.sha1(repr((_CACHE_VERSION, sorted(params.items()))).encode())
    for path in files:
        st = path.stat()
        digest.update(f"{path.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _load_cache(path, fingerprint, keys):
    """The cached arrays, or None when the cache is missing, stale or damaged."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["fingerprint"]) != fingerprint:
                return None
            return {key: data[key] for key in keys}
    # A truncated or corrupted archive (an interrupted write by an older version, a copy
    # cut short) is rebuilt like a stale one.
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error):
        return None


def _save_cache(path, fingerprint, arrays):
    """Write atomically; a read-only data_home only costs a warning."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as fh:
            np.savez(fh, fingerprint=np.array(fingerprint), **arrays)
    except OSError as exc:
        warnings.warn(
            f"Could not write the crop cache {path} ({exc}); the next load will decode "
            "the images again.",
            stacklevel=3,
        )


def _bunch(images, target, subject, descr, **extra):
    return Bunch(
        images=images,
        target=target,
        subject=subject,
        target_names=TARGET_NAMES.copy(),
        DESCR=descr,
        **extra,
    )


# --------------------------------------------------------------------------------------
# Biwi Kinect Head Pose
# --------------------------------------------------------------------------------------
def _read_numbers(path, expected, what):
    try:
        values = np.array(Path(path).read_text().split(), dtype=float)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"Cannot read {what} {path}: {exc}") from exc
    if values.size < expected or not np.all(np.isfinite(values[:expected])):
        raise ValueError(
            f"{what} {path} is corrupt: expected at least {expected} finite numbers, "
            f"found {values.size}."
        )
    return values


def _check_rotation(R, path):
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-3) or np.linalg.det(R) < 0:
        raise ValueError(f"{path} does not hold a rotation matrix: got {R.tolist()}.")


def _read_biwi_calibration(path):
    """rgb.cal: intrinsics K, 4 distortion values, R and t (depth -> RGB camera), size."""
    values = _read_numbers(path, 25, "the Biwi calibration file")
    K = values[:9].reshape(3, 3)
    R = values[13:22].reshape(3, 3)
    t = values[22:25]
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"The Biwi calibration file {path} has non-positive focal lengths.")
    _check_rotation(R, path)
    return K, R, t


def _read_biwi_pose(path):
    """frame_XXXXX_pose.txt: a 3x3 rotation (row-major) and the head centre (mm, depth frame)."""
    values = _read_numbers(path, 12, "the Biwi pose file")
    R = values[:9].reshape(3, 3)
    _check_rotation(R, path)
    return R, values[9:12]


def biwi_pose_to_angles(rotation):
    """Pitch, yaw and roll (degrees) from Biwi pose matrices, as the public benchmarks read them.

    Parameters
    ----------
    rotation : array-like of shape (3, 3) or (n, 3, 3)
        Matrices as stored, row by row, in Biwi's ``frame_XXXXX_pose.txt`` files.

    Returns
    -------
    angles : ndarray of shape (3,) or (n, 3)
        (pitch, yaw, roll) in degrees, in the convention of
        :func:`~gllim_sk.datasets.make_head_poses`.

    Examples
    --------
    >>> import numpy as np
    >>> from gllim_sk.datasets import biwi_pose_to_angles, rotation_matrix
    >>> # A pose file stores the head-to-camera rotation, as rotation_matrix builds it.
    >>> np.round(biwi_pose_to_angles(rotation_matrix(10, -20, 5)), 6) + 0.0
    array([ 10., -20.,   5.])
    """
    M = np.asarray(rotation, dtype=float)
    R = np.swapaxes(M, -1, -2)  # the benchmarks' R is the file's matrix transposed
    roll = -np.arctan2(R[..., 1, 0], R[..., 0, 0])
    yaw = -np.arctan2(-R[..., 2, 0], np.hypot(R[..., 2, 1], R[..., 2, 2]))
    pitch = np.arctan2(R[..., 2, 1], R[..., 2, 2])
    return np.degrees(np.stack([pitch, yaw, roll], axis=-1))


def _biwi_root(data_home):
    home = Path(data_home).expanduser()
    if not home.is_dir():
        raise FileNotFoundError(
            f"Biwi data_home {home} does not exist or is not a folder; expected the folder "
            "holding 'hpdb/' (or 'hpdb' itself) of the Biwi Kinect Head Pose database."
        )
    root = home / "hpdb" if (home / "hpdb").is_dir() else home
    sequences = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not sequences:
        raise FileNotFoundError(
            f"No Biwi sequence folders found in {root}: expected numbered folders "
            "'hpdb/NN/' holding frame_XXXXX_rgb.png, frame_XXXXX_pose.txt and rgb.cal."
        )
    return home, root, sequences


def _list_biwi_sequence(folder):
    calibration = folder / "rgb.cal"
    if not calibration.is_file():
        raise FileNotFoundError(f"Missing Biwi calibration file {calibration}.")
    frames = sorted(folder.glob("frame_*_rgb.png"))
    if not frames:
        raise FileNotFoundError(f"No frame_XXXXX_rgb.png images in the Biwi folder {folder}.")
    poses = []
    for frame in frames:
        pose = frame.with_name(frame.name[: -len("_rgb.png")] + "_pose.txt")
        if not pose.is_file():
            raise FileNotFoundError(
                f"Missing Biwi pose file {pose} for the image {frame.name} (partial dataset?)."
            )
        poses.append(pose)
    return calibration, frames, poses


def _load_biwi_sequence(calibration, frames, poses, image_size, crop_size_mm):
    K, R_cal, t_cal = _read_biwi_calibration(calibration)
    images = np.empty((len(frames), image_size, image_size, 3), dtype=np.uint8)
    angles = np.empty((len(frames), 3))
    for i, (frame, pose) in enumerate(zip(frames, poses, strict=True)):
        rotation, centre_depth = _read_biwi_pose(pose)
        angles[i] = biwi_pose_to_angles(rotation)
        centre = R_cal @ centre_depth + t_cal  # head centre in the RGB camera frame, mm
        if centre[2] <= 0:
            raise ValueError(f"{pose}: the head centre is not in front of the camera.")
        u = K[0, 0] * centre[0] / centre[2] + K[0, 2]
        v = K[1, 1] * centre[1] / centre[2] + K[1, 2]
        side = K[0, 0] * crop_size_mm / centre[2]
        try:
            images[i] = _square_crop(_read_rgb(frame), u, v, side, image_size)
        except ValueError as exc:
            raise ValueError(f"{frame}: {exc}") from exc
    return images, angles


def load_biwi(
    data_home,
    *,
    image_size=64,
    crop_size_mm=250.0,
    subject_of_sequence="biwi",
    cache=True,
    n_jobs=None,
):
    """Load the Biwi Kinect Head Pose database as face crops with (pitch, yaw, roll) targets.

    The original layout is read: ``hpdb/NN/frame_XXXXX_rgb.png`` with its
    ``frame_XXXXX_pose.txt`` (a 3 x 3 rotation and the head centre in millimetres, in the
    depth camera's frame) and one ``rgb.cal`` per folder (the RGB camera's intrinsics and
    the depth-to-RGB rotation ``R`` and translation ``t``). Each crop is a square centred on
    the head centre, moved to the RGB frame (``R @ centre + t``) and projected through the
    intrinsics; its side is ``crop_size_mm`` at the head's depth (``f * S / Z`` pixels), so
    faces keep their metric size. Crops are resized to ``image_size`` and cached in
    ``data_home``.

    The dataset is not downloaded: request it from its authors (ETH Zurich, "Biwi Kinect
    Head Pose Database") and extract it.

    Parameters
    ----------
    data_home : str or path-like
        The folder holding ``hpdb/``, or ``hpdb`` itself.
    image_size : int, default=64
        Side of the square crops, in pixels.
    crop_size_mm : float, default=250.0
        Side of the crop in millimetres at the head's depth.
    subject_of_sequence : "biwi", dict or None, default="biwi"
        Person id of each sequence folder ``NN``. The database has 24 sequences of 20
        people, four of whom were recorded twice; ``"biwi"`` uses the database's own
        list (``BIWI_PERSON_OF_SEQUENCE``: women F01-F06 are persons 1-6, men
        M01-M14 persons 7-20; folders outside 01-24 keep their number). A dict maps folder
        numbers to person ids; ``None`` makes every sequence its own subject.
    cache : bool, default=True
        Read and write the decoded crops as ``data_home/gllim_sk_cache/biwi_*.npz``. The
        cache is rebuilt when the crop parameters or any source file change.
    n_jobs : int or None, default=None
        Sequences decoded in parallel with joblib (``None`` means 1).

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        - ``images`` : ndarray of shape (n, image_size, image_size, 3), uint8.
        - ``target`` : ndarray of shape (n, 3), pitch, yaw and roll in degrees.
        - ``subject`` : ndarray of shape (n,), person ids (see ``subject_of_sequence``).
        - ``sequence`` : ndarray of shape (n,), the sequence folder numbers.
        - ``filenames`` : ndarray of shape (n,), image paths relative to ``hpdb``.
        - ``target_names``, ``DESCR``.

    Raises
    ------
    FileNotFoundError
        When ``data_home`` holds no Biwi layout, or a folder lacks ``rgb.cal`` or a frame
        lacks its pose file.
    ValueError
        When an image cannot be decoded or a pose or calibration file is corrupt. Nothing
        is returned (or cached) unless every frame loads.

    Notes
    -----
    Angles are read as the public benchmarks do: with ``R`` the file's matrix transposed,
    ``roll = -atan2(R[1, 0], R[0, 0])``, ``yaw = -atan2(-R[2, 0], hypot(R[2, 1], R[2, 2]))``
    and ``pitch = atan2(R[2, 1], R[2, 2])`` (:func:`biwi_pose_to_angles`). Signs: pitch > 0
    looks up, yaw > 0 turns toward the image's left, roll > 0 tilts clockwise in the image;
    :func:`make_head_poses` uses the same convention.

    Split by person (the paper's protocol) with ``groups=data.subject``, e.g. with
    :func:`train_val_test_split_by_subject` or scikit-learn's ``GroupKFold``.

    Examples
    --------
    >>> from gllim_sk.datasets import load_biwi
    >>> data = load_biwi("~/data/biwi", image_size=64)  # doctest: +SKIP
    >>> data.images.shape  # doctest: +SKIP
    (15678, 64, 64, 3)
    """
    image_size = _check_image_size(image_size)
    crop_size_mm = float(crop_size_mm)
    if not np.isfinite(crop_size_mm) or crop_size_mm <= 0:
        raise ValueError(f"crop_size_mm must be a positive number, got {crop_size_mm}.")
    home, root, sequence_dirs = _biwi_root(data_home)
    listing = [_list_biwi_sequence(folder) for folder in sequence_dirs]
    sequence_ids = np.concatenate(
        [
            np.full(len(frames), int(folder.name))
            for folder, (_, frames, _) in zip(sequence_dirs, listing, strict=True)
        ]
    )
    filenames = np.array([str(f.relative_to(root)) for _, frames, _ in listing for f in frames])
    if subject_of_sequence is None:
        subject = sequence_ids.copy()
    elif isinstance(subject_of_sequence, str):
        if subject_of_sequence != "biwi":
            raise ValueError(
                f"subject_of_sequence must be 'biwi', a dict or None, got {subject_of_sequence!r}."
            )
        subject = np.array([BIWI_PERSON_OF_SEQUENCE.get(s, s) for s in sequence_ids.tolist()])
    else:
        mapping = {int(k): int(v) for k, v in dict(subject_of_sequence).items()}
        missing = sorted(set(sequence_ids.tolist()) - set(mapping))
        if missing:
            raise ValueError(f"subject_of_sequence has no entry for the sequences {missing}.")
        subject = np.array([mapping[s] for s in sequence_ids.tolist()])

    params = {"image_size": image_size, "crop_size_mm": crop_size_mm}
    cache_path = home / "gllim_sk_cache" / f"biwi_{image_size}px_{crop_size_mm:g}mm.npz"
    fingerprint = None
    arrays = None
    if cache:
        sources = [p for cal, frames, poses in listing for p in (cal, *frames, *poses)]
        fingerprint = _fingerprint(sources, root, params)
        arrays = _load_cache(cache_path, fingerprint, ("images", "target"))
    if arrays is None:
        parts = Parallel(n_jobs=n_jobs)(
            delayed(_load_biwi_sequence)(cal, frames, poses, image_size, crop_size_mm)
            for cal, frames, poses in listing
        )
        arrays = {
            "images": np.concatenate([p[0] for p in parts]),
            "target": np.concatenate([p[1] for p in parts]),
        }
        if cache:
            _save_cache(cache_path, fingerprint, arrays)
    descr = (
        f"Biwi Kinect Head Pose database read from {root}: {len(filenames)} frames in "
        f"{len(sequence_dirs)} sequences, square RGB crops of {crop_size_mm:g} mm at the head "
        f"centre resized to {image_size}x{image_size}, targets (pitch, yaw, roll) in degrees "
        "(public benchmarks' convention)."
    )
    return _bunch(
        arrays["images"],
        arrays["target"],
        subject,
        descr,
        sequence=sequence_ids,
        filenames=filenames,
    )


# --------------------------------------------------------------------------------------
# AFLW2000-3D
# --------------------------------------------------------------------------------------
def _aflw_root(data_home):
    home = Path(data_home).expanduser()
    if not home.is_dir():
        raise FileNotFoundError(
            f"AFLW2000 data_home {home} does not exist or is not a folder; expected the "
            "folder holding imageXXXXX.jpg and imageXXXXX.mat (or its parent, holding "
            "'AFLW2000/')."
        )
    root = home / "AFLW2000" if (home / "AFLW2000").is_dir() else home
    images = sorted(root.glob("image*.jpg"))
    if not images:
        raise FileNotFoundError(
            f"No imageXXXXX.jpg files in {root}: expected the AFLW2000-3D layout "
            "(imageXXXXX.jpg with imageXXXXX.mat)."
        )
    mats = []
    for image in images:
        mat = image.with_suffix(".mat")
        if not mat.is_file():
            raise FileNotFoundError(
                f"Missing AFLW2000 annotation {mat} for the image {image.name} (partial dataset?)."
            )
        mats.append(mat)
    return home, root, images, mats


def _read_aflw_annotation(path):
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
        pose = np.asarray(mat["Pose_Para"], dtype=float).ravel()
        landmarks = np.asarray(mat["pt2d"], dtype=float)
    except KeyError as exc:
        raise ValueError(
            f"The AFLW2000 annotation {path} lacks the field {exc}; expected 'Pose_Para' "
            "and 'pt2d'."
        ) from exc
    except Exception as exc:  # scipy raises several unrelated types on corrupt files
        raise ValueError(f"Cannot read the AFLW2000 annotation {path}: {exc}") from exc
    if pose.size < 3 or not np.all(np.isfinite(pose[:3])):
        raise ValueError(f"{path}: Pose_Para must start with three finite angles, got {pose}.")
    if landmarks.ndim != 2 or 2 not in landmarks.shape:
        raise ValueError(f"{path}: pt2d must be a 2 x k array, got shape {landmarks.shape}.")
    if landmarks.shape[0] != 2:
        landmarks = landmarks.T
    # AFLW marks invisible landmarks with negative coordinates.
    valid = np.all(np.isfinite(landmarks) & (landmarks >= 0), axis=0)
    if valid.sum() < 2:
        raise ValueError(f"{path}: fewer than two visible landmarks in pt2d.")
    return np.degrees(pose[:3]), landmarks[:, valid]


def _load_aflw_images(images, mats, image_size, margin):
    crops = np.empty((len(images), image_size, image_size, 3), dtype=np.uint8)
    angles = np.empty((len(images), 3))
    for i, (image, mat) in enumerate(zip(images, mats, strict=True)):
        angles[i], points = _read_aflw_annotation(mat)
        (x0, y0), (x1, y1) = points.min(axis=1), points.max(axis=1)
        side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
        # The 21 landmarks stop at the brows: move the box up to include the forehead.
        centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2 - 0.1 * (y1 - y0)
        try:
            crops[i] = _square_crop(_read_rgb(image), centre_x, centre_y, side, image_size)
        except ValueError as exc:
            raise ValueError(f"{image}: {exc}") from exc
    return crops, angles


def load_aflw2000(
    data_home, *, image_size=64, max_angle=99.0, margin=0.25, cache=True, n_jobs=None
):
    """Load AFLW2000-3D as face crops with (pitch, yaw, roll) targets.

    Reads ``imageXXXXX.jpg`` with ``imageXXXXX.mat`` (``Pose_Para`` = pitch, yaw, roll,
    ... in radians; ``pt2d``, 2 x 21 landmarks). The crop is a square around the visible
    landmarks' bounding box, enlarged by ``margin`` on each side and moved up a little to
    include the forehead. The dataset is not downloaded: get ``AFLW2000-3D.zip`` from the
    3DDFA project page and extract it.

    Parameters
    ----------
    data_home : str or path-like
        The folder holding the ``.jpg`` and ``.mat`` files, or its parent holding
        ``AFLW2000/``.
    image_size : int, default=64
        Side of the square crops, in pixels.
    max_angle : float or None, default=99.0
        Keep only images whose three angles lie within ``[-max_angle, max_angle]`` degrees
        (the usual protocol keeps 1,969 of the 2,000 images). ``None`` keeps all.
    margin : float, default=0.25
        Extra space around the landmarks' box on each side, as a fraction of its size.
    cache : bool, default=True
        Read and write the decoded crops as ``data_home/gllim_sk_cache/aflw2000_*.npz``.
    n_jobs : int or None, default=None
        Parallel decoding with joblib (``None`` means 1).

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        - ``images`` : ndarray of shape (n, image_size, image_size, 3), uint8.
        - ``target`` : ndarray of shape (n, 3), pitch, yaw and roll in degrees.
        - ``subject`` : ndarray of shape (n,). AFLW2000 has no identity labels: every image
          gets its own id (its number in the file name).
        - ``filenames`` : ndarray of shape (n,), image file names.
        - ``target_names``, ``DESCR``.

    Raises
    ------
    FileNotFoundError
        When no images are found or an image lacks its ``.mat`` file.
    ValueError
        When an image or an annotation is corrupt.

    Examples
    --------
    >>> from gllim_sk.datasets import load_aflw2000
    >>> data = load_aflw2000("~/data/AFLW2000")  # doctest: +SKIP
    >>> len(data.target)  # doctest: +SKIP
    1969
    """
    image_size = _check_image_size(image_size)
    if max_angle is not None:
        max_angle = float(max_angle)
        if not max_angle > 0:
            raise ValueError(f"max_angle must be positive or None, got {max_angle}.")
    margin = float(margin)
    if not np.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a non-negative number, got {margin}.")
    home, root, images, mats = _aflw_root(data_home)

    params = {"image_size": image_size, "margin": margin}
    cache_path = home / "gllim_sk_cache" / f"aflw2000_{image_size}px_m{margin:g}.npz"
    fingerprint = None
    arrays = None
    if cache:
        fingerprint = _fingerprint([*images, *mats], root, params)
        arrays = _load_cache(cache_path, fingerprint, ("images", "target"))
    if arrays is None:
        batches = np.array_split(np.arange(len(images)), max(1, min(len(images), 64)))
        parts = Parallel(n_jobs=n_jobs)(
            delayed(_load_aflw_images)(
                [images[i] for i in b], [mats[i] for i in b], image_size, margin
            )
            for b in batches
            if len(b)
        )
        arrays = {
            "images": np.concatenate([p[0] for p in parts]),
            "target": np.concatenate([p[1] for p in parts]),
        }
        if cache:
            _save_cache(cache_path, fingerprint, arrays)
    names = np.array([p.name for p in images])
    ids = np.array([int("".join(c for c in p.stem if c.isdigit()) or -1) for p in images])
    if max_angle is None:
        keep = np.ones(len(images), dtype=bool)
    else:
        keep = np.all(np.abs(arrays["target"]) <= max_angle, axis=1)
    limit = "all angles" if max_angle is None else f"angles within +-{max_angle:g} degrees"
    descr = (
        f"AFLW2000-3D read from {root}: {int(keep.sum())} of {len(images)} images kept "
        f"({limit}), square crops around the 2-D landmarks resized to "
        f"{image_size}x{image_size}, targets (pitch, yaw, roll) in degrees from Pose_Para."
    )
    return _bunch(
        arrays["images"][keep],
        arrays["target"][keep],
        ids[keep],
        descr,
        filenames=names[keep],
    )
