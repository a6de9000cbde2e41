"""
Reproduce Table 1 of the paper
==============================

All seven rows of Table 1 of Lathuilière et al. (CVPR 2017), each built from the
package's public estimators and pipelines:

=============  =====================================================================
Row            Model
=============  =====================================================================
(0, 0, 0)      :func:`gllim_sk.pipelines.make_mean_pose_baseline`
HOG-SVR        :func:`gllim_sk.pipelines.make_hog_svr` (p-HOG, scaler, one SVR per angle)
HOG-IR         :func:`gllim_sk.pipelines.make_hog_ir` (p-HOG into a GLLiM, K = 50)
VGG-SVR        :func:`gllim_sk.pipelines.make_vgg_svr` (frozen VGG-16 fc7 into SVRs)
VGG-IR         :func:`gllim_sk.pipelines.make_vgg_ir` (frozen fc7 into a GLLiM, K = 50)
VGG-FCL-FT     :class:`gllim_sk.deep.DeepRegressor` (fine-tuned, L2 loss)
VGG-IR-FT      :class:`gllim_sk.deep.DeepGLLiMRegressor` (fine-tuned jointly by EM, K = 2)
=============  =====================================================================

Run it from the repository root::

    python examples/reproduce_table1.py                       # synthetic heads, quick
    python examples/reproduce_table1.py --dataset biwi --data-home ~/data/biwi \\
        --preset paper --weights DEFAULT                      # the paper's protocol, GPU
    python examples/reproduce_table1.py --dataset aflw2000 --data-home ~/data/aflw
    python examples/reproduce_table1.py --rows mean hog-svr hog-ir   # no torch needed

Datasets and splits:

- ``synthetic`` (default): the "biwi" distribution of
  :func:`gllim_sk.datasets.make_head_poses`; 20 % of the people for testing, none of
  them seen in training.
- ``biwi``: :func:`gllim_sk.datasets.load_biwi`; 8 folds by person (``GroupKFold`` on
  the 20 people, 2 or 3 of them tested per fold; the paper used 21 training and 3 test
  sequences).
- ``aflw2000``: :func:`gllim_sk.datasets.load_aflw2000`; ``KFold`` cross-validation.

The fine-tuned rows hold out 20 % of their training set for validation (the weights
with the lowest validation error are kept), as in the paper.

The ``quick`` preset (the default without a GPU) renders 2,000 synthetic heads at
64 x 64, feeds VGG-16 64 x 64 inputs and uses the deep estimators' ``"quick"`` preset:
everything, figures included, takes about ten minutes of CPU time on two cores (the
output reports both the wall-clock and the CPU time). The ``paper``
preset uses the paper's settings (224 x 224 inputs, the ``"paper"`` schedule) and needs a
GPU. The VGG rows start from a random initialisation unless ``--weights`` is given
(``DEFAULT`` or ``IMAGENET1K_V1`` for torchvision's ImageNet weights, which torchvision
downloads once, or the path of a ``state_dict`` file); the paper starts from ImageNet.

The script prints the table in the paper's format next to the paper's numbers and writes
``table1.md``, ``table1.csv``, ``table1_errors.png`` (error per angle and method) and
``table1_predictions.png`` (predicted against true angles) to ``--output-dir``.
"""

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from joblib import Memory
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, KFold

from gllim_sk._files import atomic_write, save_figure
from gllim_sk.metrics import angle_errors, format_results_table

ANGLES = ("pitch", "yaw", "roll")

# Table 1 of the paper (Biwi, mean absolute errors in degrees: pitch, yaw, roll, mean).
PAPER_TABLE1 = {
    "mean": (23.92, 28.50, 8.48, 20.30),
    "hog-svr": (8.50, 6.45, 5.04, 6.66),
    "hog-ir": (6.39, 5.69, 4.77, 5.62),
    "vgg-svr": (10.60, 19.34, 7.79, 12.57),
    "vgg-ir": (15.26, 26.79, 10.76, 17.60),
    "vgg-fcl-ft": (5.65, 4.44, 2.93, 4.34),
    "vgg-ir-ft": (4.68, 3.12, 3.07, 3.62),
}

ROW_NAMES = {
    "mean": "(0, 0, 0)",
    "hog-svr": "HOG-SVR",
    "hog-ir": "HOG-IR",
    "vgg-svr": "VGG-SVR",
    "vgg-ir": "VGG-IR",
    "vgg-fcl-ft": "VGG-FCL-FT",
    "vgg-ir-ft": "VGG-IR-FT",
}
TORCH_ROWS = ("vgg-svr", "vgg-ir", "vgg-fcl-ft", "vgg-ir-ft")

# Sizes and settings of the two presets of this script. The deep estimators get the
# preset of the same name for their training schedule.
PRESETS = {
    "quick": {
        "n_samples": 2000,
        "image_size": 64,
        "vgg_input_size": 64,
        "hog_ir_components": 20,
        "vgg_ir_components": 10,
        "deep_components": 2,
        "n_subjects": 20,
        # The paper's VGG-FCL-FT learning rate; larger ones diverge from random weights.
        "fcl_learning_rate": 1e-3,
    },
    "paper": {
        "n_samples": 20000,
        "image_size": 128,
        "vgg_input_size": 224,
        "hog_ir_components": 50,
        "vgg_ir_components": 50,
        "deep_components": 2,
        "n_subjects": 50,
        "fcl_learning_rate": 1e-3,
    },
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Reproduce Table 1 of Lathuilière et al. (CVPR 2017) with gllim_sk.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dataset", choices=("synthetic", "biwi", "aflw2000"),
                        default="synthetic")
    parser.add_argument("--data-home", type=Path, default=None,
                        help="folder holding the Biwi or AFLW2000 data (see the docs)")
    parser.add_argument("--preset", choices=("auto", "quick", "paper"), default="auto",
                        help="'auto': 'paper' when CUDA is available, else 'quick'")
    parser.add_argument("--rows", nargs="+", choices=tuple(ROW_NAMES), default=list(ROW_NAMES),
                        metavar="ROW", help=f"rows to run, among {', '.join(ROW_NAMES)}")
    parser.add_argument("--n-samples", type=int, default=None,
                        help="synthetic images to render (default: from the preset)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="side of the image crops in pixels (default: from the preset)")
    parser.add_argument("--weights", default=None,
                        help="VGG-16 weights: None (random init), DEFAULT, IMAGENET1K_V1 or a "
                             "state_dict file")
    parser.add_argument("--n-folds", type=int, default=None,
                        help="folds for biwi (default 8) and aflw2000 (default 5)")
    parser.add_argument("--folds", type=int, nargs="+", default=None,
                        help="run only these folds (0-based); default: all")
    parser.add_argument("--device", default="auto", help="torch device for the VGG rows")
    parser.add_argument("--n-jobs", type=int, default=None,
                        help="parallel jobs for HOG features and SVRs")
    parser.add_argument("--output-dir", type=Path,
                        default=Path(__file__).resolve().parent / "output")
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args(argv)
    if args.dataset != "synthetic" and args.data_home is None:
        parser.error(f"--dataset {args.dataset} needs --data-home")
    if args.weights is not None and args.weights.lower() == "none":
        args.weights = None
    return args


def resolve_preset(name):
    if name != "auto":
        return name
    try:
        import torch
    except ImportError:
        return "quick"
    return "paper" if torch.cuda.is_available() else "quick"


def describe_weights(weights):
    if weights is None:
        return "random initialisation (weights=None)"
    if Path(str(weights)).exists():
        return f"state_dict file {weights}"
    return f"torchvision ImageNet weights ({weights})"


# ---------------------------------------------------------------------------------------
# Data and splits
# ---------------------------------------------------------------------------------------
def load_dataset(args, settings):
    """The dataset Bunch and a list of (name, train indices, test indices) splits."""
    from gllim_sk import datasets

    image_size = args.image_size or settings["image_size"]
    if args.dataset == "synthetic":
        n_samples = args.n_samples or settings["n_samples"]
        data = datasets.make_head_poses(
            n_samples,
            distribution="biwi",
            image_size=image_size,
            n_subjects=settings["n_subjects"],
            random_state=args.random_state,
        )
        splitter = GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=args.random_state)
        splits = list(splitter.split(data.images, data.target, groups=data.subject))
    elif args.dataset == "biwi":
        data = datasets.load_biwi(args.data_home, image_size=image_size)
        splitter = GroupKFold(n_splits=args.n_folds or 8)
        splits = list(splitter.split(data.images, data.target, groups=data.subject))
    else:
        data = datasets.load_aflw2000(args.data_home, image_size=image_size)
        splitter = KFold(n_splits=args.n_folds or 5, shuffle=True, random_state=args.random_state)
        splits = list(splitter.split(data.images, data.target))
    named = [(f"fold {i}", train, test) for i, (train, test) in enumerate(splits)]
    if args.folds is not None:
        named = [named[i] for i in args.folds]
    return data, named


# ---------------------------------------------------------------------------------------
# The seven rows
# ---------------------------------------------------------------------------------------
def build_row(row, args, settings, memory):
    """An unfitted estimator for one row of Table 1, from the package's public pieces."""
    from gllim_sk import pipelines

    seed = args.random_state
    if row == "mean":
        return pipelines.make_mean_pose_baseline()
    if row == "hog-svr":
        return pipelines.make_hog_svr(n_jobs=args.n_jobs)
    if row == "hog-ir":
        return pipelines.make_hog_ir(
            settings["hog_ir_components"], n_jobs=args.n_jobs, random_state=seed
        )

    from gllim_sk import deep

    vgg = {
        "weights": args.weights,
        "input_size": settings["vgg_input_size"],
        "device": args.device,
    }
    # Seeds the random initialisation of the frozen VGG-16, when one is used.
    frozen_vgg = {**vgg, "vgg_params": {"random_state": seed}}
    if row == "vgg-svr":
        # Pipeline memory: the frozen fc7 features of the training images are computed
        # once and reused by VGG-IR.
        return pipelines.make_vgg_svr(**frozen_vgg).set_params(memory=memory)
    if row == "vgg-ir":
        return pipelines.make_vgg_ir(
            n_components=settings["vgg_ir_components"], random_state=seed, **frozen_vgg
        ).set_params(memory=memory)
    deep_preset = args.preset
    if row == "vgg-fcl-ft":
        return deep.DeepRegressor(
            preset=deep_preset,
            learning_rate=settings["fcl_learning_rate"],
            random_state=seed,
            verbose=args.verbose,
            **vgg,
        )
    return deep.DeepGLLiMRegressor(
        gllim=deep.default_head(n_components=settings["deep_components"]),
        preset=deep_preset,
        random_state=seed,
        verbose=args.verbose,
        **vgg,
    )


def run(args):
    args.preset = resolve_preset(args.preset)
    settings = PRESETS[args.preset]
    rows = [row for row in ROW_NAMES if row in args.rows]
    if any(row in TORCH_ROWS for row in rows):
        try:
            import torch  # noqa: F401
        except ImportError:
            sys.exit("The VGG rows need the 'deep' extra: pip install 'gllim_sk[deep]' "
                     "(or choose --rows mean hog-svr hog-ir).")

    started = time.perf_counter()
    cpu_started = time.process_time()
    data, splits = load_dataset(args, settings)
    X, y = data.images, np.asarray(data.target, dtype=float)
    load_seconds = time.perf_counter() - started
    print(f"dataset: {args.dataset}, {X.shape[0]} images of {X.shape[1]}x{X.shape[2]} px, "
          f"{len(np.unique(data.subject))} people (loaded in {load_seconds:.1f} s)")

    predictions = {row: [] for row in rows}
    truths = []
    fit_seconds = dict.fromkeys(rows, 0.0)
    split_sizes = []
    failures = {}
    with tempfile.TemporaryDirectory(prefix="gllim_sk_table1_") as cache_dir:
        memory = Memory(cache_dir, verbose=0)
        for split_name, train, test in splits:
            n_people_train = len(np.unique(data.subject[train]))
            n_people_test = len(np.unique(data.subject[test]))
            split_sizes.append((split_name, len(train), len(test), n_people_train, n_people_test))
            print(f"{split_name}: {len(train)} training images ({n_people_train} people), "
                  f"{len(test)} test images ({n_people_test} people)")
            truths.append(y[test])
            for row in rows:
                if row in failures:
                    continue
                tic = time.perf_counter()
                try:
                    model = build_row(row, args, settings, memory)
                    # The fine-tuned rows hold out validation people, never training ones.
                    fit_params = ({"groups": data.subject[train]}
                                  if row in ("vgg-fcl-ft", "vgg-ir-ft") else {})
                    model.fit(X[train], y[train], **fit_params)
                    predictions[row].append(np.asarray(model.predict(X[test])))
                except Exception as exc:  # report the failed row, keep running the others
                    failures[row] = f"{type(exc).__name__}: {exc}"
                    print(f"  {ROW_NAMES[row]:<11} FAILED: {failures[row]}", flush=True)
                    continue
                seconds = time.perf_counter() - tic
                fit_seconds[row] += seconds
                error = angle_errors(y[test], predictions[row][-1])["mean"]
                print(f"  {ROW_NAMES[row]:<11} mean error {error:6.2f} deg  ({seconds:6.1f} s)",
                      flush=True)
            memory.clear(warn=False)

    y_true = np.concatenate(truths)
    y_pred = {row: np.concatenate(predictions[row]) for row in rows if row not in failures}
    errors = {row: angle_errors(y_true, pred) for row, pred in y_pred.items()}
    # A failed row stays in the table, marked "/" (and explained in the markdown).
    errors.update({row: dict.fromkeys((*ANGLES, "mean")) for row in failures})
    total_seconds = (time.perf_counter() - started, time.process_time() - cpu_started)
    report(args, settings, data, rows, errors, y_true, y_pred, fit_seconds, split_sizes,
           total_seconds, failures)
    if failures:
        sys.exit(f"{len(failures)} row(s) failed: {', '.join(ROW_NAMES[r] for r in failures)}")


# ---------------------------------------------------------------------------------------
# Output: tables and figures
# ---------------------------------------------------------------------------------------
def report(args, settings, data, rows, errors, y_true, y_pred, fit_seconds, split_sizes,
           total_seconds, failures):
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    ours = {ROW_NAMES[row]: errors[row] for row in rows}
    paper = {ROW_NAMES[row]: PAPER_TABLE1[row] for row in rows}
    uses_vgg = any(row in TORCH_ROWS for row in rows)

    header = [
        f"Dataset: {args.dataset}"
        + (" (make_head_poses, distribution='biwi')" if args.dataset == "synthetic" else ""),
        f"Preset: {args.preset}; images {data.images.shape[1]}x{data.images.shape[2]} px"
        + (f"; VGG input {settings['vgg_input_size']} px" if uses_vgg else ""),
    ]
    if uses_vgg:
        header.append(f"VGG-16 weights: {describe_weights(args.weights)}")
    header.append("Splits (person-disjoint where people are known): " + "; ".join(
        f"{name}: train {n_train} ({p_train} people), test {n_test} ({p_test} people)"
        for name, n_train, n_test, p_train, p_test in split_sizes))
    components = {"hog-ir": "hog_ir_components", "vgg-ir": "vgg_ir_components",
                  "vgg-ir-ft": "deep_components"}
    if any(row in components for row in rows):
        header.append("Components: " + ", ".join(
            f"{ROW_NAMES[row]} K = {settings[key]}" for row, key in components.items()
            if row in rows))
    wall, cpu = total_seconds
    header.append(f"Total time {wall / 60:.1f} min wall-clock, {cpu / 60:.1f} min CPU "
                  f"(all threads), on {os.cpu_count()} {platform.machine()} cores")

    text_ours = format_results_table(ours, fmt="text")
    text_paper = format_results_table(paper, fmt="text")
    print()
    print("\n".join(header))
    print("\nMean absolute error (degrees), this run:")
    print(text_ours)
    print("\nTable 1 of the paper (Biwi, ImageNet-pretrained VGG-16, 224x224):")
    print(text_paper)

    timing = "\n".join(f"| {ROW_NAMES[row]} | {fit_seconds[row]:.1f} |" for row in rows)
    markdown = "\n".join([
        "# Table 1, reproduced with gllim_sk",
        "",
        *(f"- {line}" for line in header),
        "",
        "## This run (mean absolute error, degrees)",
        "",
        format_results_table(ours, fmt="markdown"),
        "",
        "## The paper's Table 1 (Biwi)",
        "",
        format_results_table(paper, fmt="markdown"),
        "",
        *(["Failed rows: " + "; ".join(f"{ROW_NAMES[r]}: {m}" for r, m in failures.items()),
           ""] if failures else []),
        "## Fit and predict time per row (seconds, all folds)",
        "",
        "| Method | Seconds |",
        "|:--|--:|",
        timing,
        "",
    ])
    with atomic_write(out / "table1.md", "w", encoding="utf-8") as handle:
        handle.write(markdown)

    with atomic_write(out / "table1.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "pitch", "yaw", "roll", "mean",
                         "paper_pitch", "paper_yaw", "paper_roll", "paper_mean", "seconds"])
        for row in rows:
            e = errors[row]
            writer.writerow([ROW_NAMES[row],
                             *("" if e[a] is None else f"{e[a]:.3f}" for a in (*ANGLES, "mean")),
                             *PAPER_TABLE1[row], f"{fit_seconds[row]:.1f}"])

    done = [row for row in rows if row not in failures]
    if done:
        plot_errors(out / "table1_errors.png", done, errors)
        plot_predictions(out / "table1_predictions.png", done, y_true, y_pred)
    print(f"\nwrote table1.md, table1.csv, table1_errors.png, table1_predictions.png to {out}")


def plot_errors(path, rows, errors):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [*(a.capitalize() for a in ANGLES), "Mean"]
    keys = [*ANGLES, "mean"]
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, row in enumerate(rows):
        positions = np.arange(len(keys)) + (i - (len(rows) - 1) / 2) * width
        ax.bar(positions, [errors[row][k] for k in keys], width, label=ROW_NAMES[row])
        ax.scatter(positions, PAPER_TABLE1[row], marker="_", color="black", s=80, zorder=3,
                   label="paper" if i == 0 else None)
    ax.set_xticks(np.arange(len(keys)), labels)
    ax.set_ylabel("mean absolute error (degrees)")
    ax.set_title("Per-angle error by method (bars: this run; black ticks: the paper)")
    ax.legend(ncols=2, fontsize="small")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def plot_predictions(path, rows, y_true, y_pred):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 2.6 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j, angle in enumerate(ANGLES):
            ax = axes[i, j]
            ax.scatter(y_true[:, j], y_pred[row][:, j], s=3, alpha=0.4)
            low, high = y_true[:, j].min(), y_true[:, j].max()
            ax.plot([low, high], [low, high], color="black", lw=0.8)
            ax.set_title(f"{ROW_NAMES[row]}: {angle}", fontsize="small")
            if i == len(rows) - 1:
                ax.set_xlabel("true (deg)")
            if j == 0:
                ax.set_ylabel("predicted (deg)")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    run(parse_args())

# sphinx_gallery_thumbnail_path = "_static/thumbnails/reproduce_table1.png"
