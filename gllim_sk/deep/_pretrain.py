"""Pretraining a backbone on person identification of synthetic heads.

The paper starts from ImageNet features: informative about faces, but trained for a
task (object classification) that rewards ignoring pose. Where ImageNet weights cannot
be downloaded, :func:`pretrain_head_backbone` builds a backbone that plays the same
part: a torchvision classification network trained to recognise which synthetic
person (:func:`gllim_sk.datasets.make_head_poses`) an image shows, with pose, light,
background and framing drawn at random for every image, so that the features it learns
are rewarded for *not* depending on pose.
"""

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._files import atomic_write
from ._backbone import load_model, replace_classifier, to_input_tensor
from ._torch import progress, seeded

__all__ = ["pretrain_head_backbone"]

# Bump when the training recipe changes, so that old cached files are not reused.
_RECIPE_VERSION = 1
# The people of make_head_poses are drawn from its random_state; pretraining draws
# them from seeds offset by this constant, so that no seed used elsewhere (Table 1
# uses small seeds such as 0) renders the same people.
_PEOPLE_SEED_OFFSET = 7_919_000


def _default_cache_dir():
    home = os.environ.get("GLLIM_SK_HOME", os.path.join("~", ".cache", "gllim_sk"))
    return Path(home).expanduser() / "pretrained"


def pretrain_head_backbone(
    model="resnet18",
    *,
    n_subjects=60,
    n_samples=3000,
    image_size=64,
    n_epochs=4,
    batch_size=64,
    learning_rate=0.05,
    random_state=0,
    cache_dir=None,
    verbose=0,
):
    """Train a torchvision network to identify synthetic people; return its weights file.

    The network (randomly initialised, nothing downloaded) learns to tell apart
    ``n_subjects`` procedural people of :func:`gllim_sk.datasets.make_head_poses`
    rendered at uniformly random poses over the whole pose box, under random lights,
    backgrounds, clothes and framing: a task that, like ImageNet classification,
    rewards features that are informative about faces and ignore pose. The people are
    drawn from seeds that no other function of the package uses by default, so they
    differ from the people of the examples and of the Table 1 script.

    Training is SGD with Nesterov momentum, weight decay 5e-4 and a cosine learning
    rate schedule, seeded by ``random_state``: on the CPU, with the same number of torch
    threads, two runs give the same weights. The result is cached: a file in
    ``cache_dir`` named by a hash of every setting (and of the torch version) is
    reused when it exists, and written atomically (temporary file, then rename)
    otherwise. Next to it, a ``.json`` file records the settings and the
    identification accuracy on held-out images of the same people (new poses and
    scenes).

    Parameters
    ----------
    model : str, default="resnet18"
        A torchvision classification model name. ``"resnet18"`` is the CPU choice: on
        two cores it trains at 64 x 64 several times faster than any VGG, whose
        25088 x 4096 fc6 and 64 px convolutions dominate (see the user guide).
    n_subjects : int, default=60
        Number of people (classes).
    n_samples : int, default=3000
        Number of training images (shared out evenly between the people).
    image_size : int, default=64
        Side of the rendered images and of the network input, in pixels.
    n_epochs : int, default=4
    batch_size : int, default=64
    learning_rate : float, default=0.05
        Peak SGD learning rate of the cosine schedule.
    random_state : int, default=0
        Seeds the people, the images and the training.
    cache_dir : str or path-like, default=None
        Where weight files are kept; ``None`` is ``$GLLIM_SK_HOME/pretrained``
        (``~/.cache/gllim_sk/pretrained`` by default).
    verbose : int, default=0
        Progress bars when positive.

    Returns
    -------
    path : pathlib.Path
        A ``state_dict`` file of the network (its last layer has ``n_subjects``
        outputs), to pass as ``weights=`` with ``model=model`` to
        :class:`VGGFeatures`, :class:`DeepRegressor` or :class:`DeepGLLiMRegressor`.

    Examples
    --------
    >>> from gllim_sk.deep import DeepGLLiMRegressor, pretrain_head_backbone
    >>> path = pretrain_head_backbone(n_subjects=4, n_samples=32, image_size=32,
    ...                               n_epochs=1, cache_dir=tmp_dir)  # doctest: +SKIP
    >>> reg = DeepGLLiMRegressor(model="resnet18", weights=path)  # doctest: +SKIP
    """
    from ..datasets import make_head_poses

    for name, value, low in (("n_subjects", n_subjects, 2), ("n_samples", n_samples, 4),
                             ("image_size", image_size, 32), ("n_epochs", n_epochs, 1),
                             ("batch_size", batch_size, 2)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if n_samples < 2 * n_subjects:
        raise ValueError(
            f"n_samples={n_samples} must be at least 2 * n_subjects={2 * n_subjects}: "
            "every person needs training and held-out images."
        )
    if not isinstance(model, str):
        raise TypeError(f"model must be a torchvision model name, got {model!r}.")
    if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}.")
    if not isinstance(random_state, (int, np.integer)):
        raise TypeError(f"random_state must be an int (it names a cached file), got "
                        f"{random_state!r}.")
    settings = {
        "recipe": _RECIPE_VERSION, "model": model, "n_subjects": int(n_subjects),
        "n_samples": int(n_samples), "image_size": int(image_size),
        "n_epochs": int(n_epochs), "batch_size": int(batch_size),
        "learning_rate": float(learning_rate), "random_state": int(random_state),
        "torch": torch.__version__.split("+")[0],
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    path = folder / f"heads_{model}_{image_size}px_{key}.pt"
    if path.is_file():
        try:  # a damaged file (e.g. copied in part) is rebuilt, not returned
            torch.load(path, map_location="cpu", weights_only=True)
            return path
        except Exception as exc:  # torch raises several types on damaged archives
            warnings.warn(f"The cached weights {path} cannot be read ({exc}); they are "
                          "trained again.", stacklevel=2)

    # Training images, then held-out images of the same people in new poses/scenes:
    # one render with 1/8 more images, split by position (each person's images are
    # spread evenly over the array).
    n_held_out = max(n_subjects, n_samples // 8)
    data = make_head_poses(
        n_samples + n_held_out, distribution="uniform", image_size=image_size,
        n_subjects=n_subjects, random_state=_PEOPLE_SEED_OFFSET + int(random_state),
    )
    images, labels = data.images, data.subject
    train, held_out = np.arange(n_samples), np.arange(n_samples, n_samples + n_held_out)

    device = torch.device("cpu")
    with seeded(int(random_state), device):
        net = replace_classifier(load_model(model, None), n_subjects)
        generator = torch.Generator().manual_seed(int(random_state))
        optimizer = torch.optim.SGD(net.parameters(), lr=learning_rate, momentum=0.9,
                                    nesterov=True, weight_decay=5e-4)
        steps_per_epoch = -(-n_samples // batch_size)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=learning_rate, total_steps=n_epochs * steps_per_epoch,
            pct_start=0.15, anneal_strategy="cos")
        target = torch.as_tensor(labels, dtype=torch.long)
        net.train()
        for _ in progress(range(n_epochs), verbose, desc="pretraining"):
            order = torch.randperm(n_samples, generator=generator).numpy()
            for start in range(0, n_samples, batch_size):
                index = train[np.sort(order[start:start + batch_size])]
                if len(index) < 2:  # BatchNorm cannot normalise one sample
                    scheduler.step()
                    continue
                x = to_input_tensor(images[index], image_size, device)
                loss = nn.functional.cross_entropy(net(x), target[index])
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        "pretraining diverged; lower learning_rate."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
        net.eval()
        correct = 0
        with torch.inference_mode():
            for start in range(0, n_held_out, 256):
                index = held_out[start:start + 256]
                logits = net(to_input_tensor(images[index], image_size, device))
                correct += int((logits.argmax(1) == target[index]).sum())

    folder.mkdir(parents=True, exist_ok=True)
    info = {**settings, "held_out_accuracy": correct / n_held_out,
            "n_held_out": int(n_held_out), "chance": 1.0 / n_subjects}
    with atomic_write(path.with_suffix(".json")) as handle:
        handle.write(json.dumps(info, indent=2).encode())
    with atomic_write(path) as handle:  # last: the weights file marks a complete entry
        torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, handle)
    return path
