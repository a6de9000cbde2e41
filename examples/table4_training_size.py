"""
Table 4: error against the size of the training set
===================================================

Table 4 of Lathuilière et al. (CVPR 2017) trains VGG-IR-FT on 20 %, 40 %, ..., 100 % of
the Biwi training set, drawn at random, and reports the test error of each. This script
does the same on the package's synthetic heads (or on Biwi with ``--dataset biwi``),
with a person-disjoint train/test split, and plots the error of each angle against the
fraction used.

Run it from the repository root::

    python examples/table4_training_size.py                   # quick preset, CPU
    python examples/table4_training_size.py --model hog-ir    # no torch needed, fast
    python examples/table4_training_size.py --preset paper --weights DEFAULT   # GPU

It prints a table laid out like Table 4 and writes ``table4.md``, ``table4.csv`` and
``table4.png`` to ``--output-dir``.
"""

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from gllim_sk._files import atomic_write, save_figure
from gllim_sk.metrics import angle_errors, format_results_table

ANGLES = ("pitch", "yaw", "roll")

# Table 4 of the paper (Biwi, VGG-IR-FT): pitch, yaw, roll, mean in degrees.
PAPER_TABLE4 = {
    0.2: (9.36, 7.00, 6.19, 7.55),
    0.4: (6.2, 5.00, 5.14, 5.45),
    0.6: (6.33, 4.33, 4.18, 4.95),
    0.8: (5.49, 3.77, 4.12, 4.46),
    1.0: (4.68, 3.12, 3.07, 3.62),
}

PRESETS = {
    "quick": {"n_samples": 1500, "image_size": 64, "input_size": 64, "embedding_dim": 128,
              "n_subjects": 20},
    "paper": {"n_samples": 20000, "image_size": 224, "input_size": 224, "embedding_dim": 512,
              "n_subjects": 50},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Table 4 of Lathuilière et al. (CVPR 2017): error against training size.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dataset", choices=("synthetic", "biwi"), default="synthetic")
    parser.add_argument("--data-home", type=Path, default=None)
    parser.add_argument("--model", choices=("vgg-ir-ft", "hog-ir"), default="vgg-ir-ft",
                        help="VGG-IR-FT as in the paper, or the torch-free HOG-IR")
    parser.add_argument("--preset", choices=("auto", "quick", "paper"), default="auto")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8, 1.0])
    parser.add_argument("--n-samples", type=int, default=None)
    parser.add_argument("--n-components", type=int, default=None,
                        help="K (default: 2 for VGG-IR-FT, 20 for HOG-IR)")
    parser.add_argument("--weights", default=None,
                        help="VGG-16 weights: None, DEFAULT, IMAGENET1K_V1 or a file")
    parser.add_argument("--embedding-dim", type=int, default=None,
                        help="width of the layer under the GLLiM (paper: 512; the quick "
                             "preset uses 128 so that small training sets can fit it)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output-dir", type=Path,
                        default=Path(__file__).resolve().parent / "output")
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args(argv)
    if args.dataset == "biwi" and args.data_home is None:
        parser.error("--dataset biwi needs --data-home")
    if any(not 0 < f <= 1 for f in args.fractions):
        parser.error("--fractions must lie in (0, 1]")
    if args.weights is not None and args.weights.lower() == "none":
        args.weights = None
    if args.preset == "auto":
        try:
            import torch

            args.preset = "paper" if torch.cuda.is_available() else "quick"
        except ImportError:
            args.preset = "quick"
    return args


def make_model(args, settings):
    if args.model == "hog-ir":
        from gllim_sk.pipelines import make_hog_ir

        return make_hog_ir(args.n_components or 20, random_state=args.random_state)
    from gllim_sk.deep import DeepGLLiMRegressor, default_head

    return DeepGLLiMRegressor(gllim=default_head(n_components=args.n_components or 2),
                              preset=args.preset,
                              weights=args.weights, input_size=settings["input_size"],
                              embedding_dim=args.embedding_dim or settings["embedding_dim"],
                              device=args.device, random_state=args.random_state,
                              verbose=args.verbose)


def main(args):
    from gllim_sk import datasets

    settings = PRESETS[args.preset]
    started = time.perf_counter()
    if args.dataset == "synthetic":
        data = datasets.make_head_poses(args.n_samples or settings["n_samples"],
                                        distribution="biwi", image_size=settings["image_size"],
                                        n_subjects=settings["n_subjects"],
                                        random_state=args.random_state)
    else:
        data = datasets.load_biwi(args.data_home, image_size=settings["image_size"])
    splitter = GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=args.random_state)
    train, test = next(splitter.split(data.images, data.target, groups=data.subject))
    rng = np.random.default_rng(args.random_state)
    # Nested subsets: each larger fraction adds images to the smaller one.
    order = rng.permutation(train)

    results, sizes, seconds = {}, {}, {}
    for fraction in sorted(args.fractions):
        subset = order[: max(2, round(fraction * len(order)))]
        tic = time.perf_counter()
        model = make_model(args, settings).fit(data.images[subset], data.target[subset])
        errors = angle_errors(data.target[test], model.predict(data.images[test]))
        label = f"{fraction:.0%}"
        results[label], sizes[label] = errors, len(subset)
        seconds[label] = time.perf_counter() - tic
        print(f"{label:>5}: {len(subset)} training images, mean error {errors['mean']:.2f} deg "
              f"({seconds[label]:.0f} s)", flush=True)

    model_name = "VGG-IR-FT" if args.model == "vgg-ir-ft" else "HOG-IR"
    summary = (f"{model_name}, dataset {args.dataset}, preset {args.preset}, "
               f"{len(train)} training / {len(test)} test images (person-disjoint)"
               + (f", VGG-16 weights {args.weights or 'random initialisation'}, embedding_dim "
                  f"{args.embedding_dim or settings['embedding_dim']}"
                  if args.model == "vgg-ir-ft" else "")
               + f"; {(time.perf_counter() - started) / 60:.1f} min")
    paper = {f"{f:.0%}": v for f, v in PAPER_TABLE4.items()}
    print("\nMean absolute error (degrees) against the fraction of training data, this run:")
    print(format_results_table(results, method_header="Training data"))
    print("\nTable 4 of the paper (Biwi, VGG-IR-FT):")
    print(format_results_table(paper, method_header="Training data"))
    print(summary)

    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "table4.md", "w", encoding="utf-8") as handle:
        handle.write(
            "# Table 4, reproduced with gllim_sk\n\n" + summary + "\n\n## This run\n\n"
            + format_results_table(results, fmt="markdown", method_header="Training data")
            + "\n\n## The paper\n\n"
            + format_results_table(paper, fmt="markdown", method_header="Training data") + "\n")
    with atomic_write(out / "table4.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fraction", "n_train", "pitch", "yaw", "roll", "mean", "seconds"])
        for label, e in results.items():
            writer.writerow([label, sizes[label], *(f"{e[a]:.3f}" for a in (*ANGLES, "mean")),
                             f"{seconds[label]:.1f}"])
    plot(out / "table4.png", results, sizes, model_name)
    print(f"wrote table4.md, table4.csv and table4.png to {out}")


def plot(path, results, sizes, model_name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    n_train = [sizes[label] for label in labels]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in (*ANGLES, "mean"):
        ax.plot(n_train, [results[label][key] for label in labels], marker="o",
                lw=2.5 if key == "mean" else 1.2, label=key)
    ax.set_xticks(n_train, [f"{label}\n({n})" for label, n in zip(labels, n_train, strict=True)])
    ax.set_xlabel("fraction of the training set (images)")
    ax.set_ylabel("mean absolute error (degrees)")
    ax.set_title(f"{model_name}: error against training-set size")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(parse_args())

# sphinx_gallery_thumbnail_path = "_static/thumbnails/table4_training_size.png"
