"""
Deep regression under label noise: an L2 head, a Gaussian and a Student mixture head
====================================================================================

A fraction of the training labels is replaced by poses drawn at random from the pose
distribution (the test labels stay clean), and six methods are trained on the same
images:

- ``L2 head``: :class:`~gllim_sk.deep.DeepRegressor` (VGG-FCL-FT, squared loss);
- ``GLLiM head``: :class:`~gllim_sk.deep.DeepGLLiMRegressor` with its default Gaussian
  :class:`~gllim_sk.GLLiMRegressor` head (VGG-IR-FT);
- ``Student head``: the same with a :class:`~gllim_sk.StudentGLLiMRegressor` head, whose
  network loss weights each image by the E-step's expected scale u (small for an image
  whose label no component explains);
- ``Student head, no u``: the Student mixture head with the network's loss weighted by
  the responsibilities alone (``loss_weights="responsibilities"``): the mixture's fit is
  robust, the network's loss is the Gaussian head's;
- ``HOG-IR GLLiM`` and ``HOG-IR Student``: no network, p-HOG features into either
  mixture (:func:`~gllim_sk.pipelines.make_hog_ir`).

The deep methods share the backbone and schedule of the pretrained regime
(``examples/pretrained_regime.py --part regime``): a ResNet-18 pretrained on person
identification of synthetic heads (:func:`~gllim_sk.deep.pretrain_head_backbone`),
``layer3`` and ``layer4`` fine-tuned (``--trainable-layers 3``, as there), 6
alternations of 2 epochs (the L2 head: 2 epochs of the head, then 12 with the same
layers), learning rate 1e-2, on the Table 1 main
job's data (2,000 synthetic heads of 20 people, Biwi-like poses, 20 % of the people held
out for the test).

Run from the repository root (one fit of a deep method takes about 3.5 minutes on a
2-core CPU at one thread, a few seconds on a GPU)::

    python examples/label_noise.py --device cuda --output-dir label_noise_output
    # a smoke run on the CPU (tiny: not for conclusions)
    python examples/label_noise.py --n-samples 400 --seeds 0 --alternations 2 \\
        --rates 0 0.2 --output-dir label_noise_smoke

Runs already in ``--output-dir/results_label_noise.json`` are skipped, so an interrupted
run continues where it stopped; ``--methods`` and ``--rates`` choose a subset. The
figure ``label_noise.png`` shows the test error against the corruption rate and the
per-sample weights of the corrupted and clean training images under the Student heads.
The summary also prints, for each mixture run, how well two scores tell the clean
training pairs from the corrupted ones (area under the ROC curve): the Student weights,
and the Mahalanobis distance of the label under the mixture's own predictive
p(y | x); ``--alternations 0`` measures them on the initial network's features. The
user guide's "Deep GLLiM" page reports the measured numbers.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import GroupShuffleSplit

from gllim_sk import StudentGLLiMRegressor
from gllim_sk._files import atomic_write, save_figure
from gllim_sk.datasets import make_head_poses
from gllim_sk.pipelines import make_hog_ir

METHODS = ("L2 head", "GLLiM head", "Student head", "Student head, no u", "HOG-IR GLLiM",
           "HOG-IR Student")
DEEP = METHODS[:4]
# The Table 1 main job's data, as examples/pretrained_regime.py --part regime.
DATA = {"n_samples": 2000, "n_subjects": 20, "distribution": "biwi", "seed": 0}
RESULTS = "results_label_noise.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.4],
                        help="fractions of the training labels replaced")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--n-samples", type=int, default=DATA["n_samples"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--weights", default=None,
                        help="backbone weights (default: pretrain_head_backbone's)")
    parser.add_argument("--alternations", type=int, default=6,
                        help="0: the mixture heads on the initial network's features")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per alternation")
    parser.add_argument("--trainable-layers", type=int, default=3,
                        help="ResNet stages trained, from the end (3: pool, layer4 and "
                             "layer3, as pretrained_regime.py --part regime)")
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--components", type=int, default=2, help="K of the deep heads")
    parser.add_argument("--hog-components", type=int, default=20, help="K of HOG-IR")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--n-jobs", type=int, default=None, help="jobs for the HOG features")
    parser.add_argument("--output-dir", type=Path, default=Path("label_noise_output"))
    return parser.parse_args(argv)


def corrupt(y, rate, seed):
    """Replace ``round(rate * n)`` labels by poses drawn from the pose distribution."""
    rng = np.random.default_rng(10_000 + seed)
    n_bad = int(round(rate * len(y)))
    bad = np.zeros(len(y), dtype=bool)
    bad[rng.choice(len(y), n_bad, replace=False)] = True
    noisy = y.copy()
    if n_bad:
        # Poses of the same distribution as the data's (tiny images: only poses are used).
        noisy[bad] = make_head_poses(n_bad, distribution=DATA["distribution"], image_size=8,
                                     n_subjects=1, random_state=20_000 + seed).target
    return noisy, bad


def make_method(name, args, weights, seed):
    from gllim_sk.deep import DeepGLLiMRegressor, DeepRegressor, default_head

    if name.startswith("HOG-IR"):
        # The mixture of make_hog_ir (fitted on HOG features computed once, see run).
        gllim = make_hog_ir(args.hog_components, random_state=seed).named_steps["gllim"]
        return StudentGLLiMRegressor(**gllim.get_params()) if name.endswith("Student") \
            else gllim
    common = {"model": args.model, "weights": weights, "input_size": args.image_size,
              "batch_size": 32, "device": args.device, "random_state": seed,
              "learning_rate": args.learning_rate}
    n_epochs = args.alternations * args.epochs
    if name == "L2 head":
        return DeepRegressor(phases=((2, 0), (n_epochs, args.trainable_layers)), **common)
    # Both heads with DeepGLLiMRegressor's default settings but the kind of component.
    head = default_head(n_components=args.components)
    if name.startswith("Student head"):
        head = StudentGLLiMRegressor(**head.get_params())
    loss_weights = "responsibilities" if name.endswith("no u") else "expected_scale"
    return DeepGLLiMRegressor(gllim=head, loss_weights=loss_weights,
                              trainable_layers=args.trainable_layers,
                              n_alternations=args.alternations, n_epochs=args.epochs,
                              **common)


def sample_weights(name, model, inputs, y):
    """Sum_k p(k | x, y) E[u | x, y, k] / alpha_k of each training pair (Student heads)."""
    if name.startswith("Student head"):
        return model.gllim_.outlier_weights(model.transform(inputs), y)
    if name == "HOG-IR Student":
        return model.outlier_weights(inputs, y)
    return None


def label_distances(name, model, inputs, y):
    """Mahalanobis distance of each training label under the mixture's own predictive
    p(y | x) (its mean and covariance): large for a label the features do not support."""
    if name == "L2 head":
        return None
    head = model.gllim_ if name in DEEP else model
    features = model.transform(inputs) if name in DEEP else inputs
    mean, cov = head.predict(features, return_cov=True)
    residual = y - mean
    return np.einsum("ni,ni->n", residual, np.linalg.solve(cov, residual[..., None])[..., 0])


def separation(clean, corrupted):
    """Area under the ROC curve of a score that should be higher for clean pairs."""
    from sklearn.metrics import roc_auc_score

    scores = np.concatenate([clean, corrupted])
    return roc_auc_score(np.r_[np.ones(len(clean)), np.zeros(len(corrupted))], scores)


def mae(y_true, y_pred):
    return np.mean(np.abs(y_true - y_pred), axis=0)


def load_runs(path):
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)["runs"]


def run(args):
    torch.set_num_threads(args.threads)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / RESULTS
    runs = load_runs(path)
    done = {(r["method"], r["rate"], r["seed"]) for r in runs}
    data = make_head_poses(args.n_samples, distribution=DATA["distribution"],
                           image_size=args.image_size, n_subjects=DATA["n_subjects"],
                           random_state=DATA["seed"])
    splitter = GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=DATA["seed"])
    train, test = next(splitter.split(data.images, groups=data.subject))
    inputs = {"deep": (data.images[train], data.images[test])}
    if any(m.startswith("HOG") for m in args.methods):
        # The HOG pyramid is fixed (no parameter is learned): computed once for all fits.
        hog = make_hog_ir(n_jobs=args.n_jobs)[:-1]
        inputs["hog"] = (hog.fit_transform(data.images[train]), hog.transform(data.images[test]))
    weights = None
    if any(m in DEEP for m in args.methods):
        from gllim_sk.deep import pretrain_head_backbone

        weights = args.weights or pretrain_head_backbone(args.model,
                                                         image_size=args.image_size)
    for seed in args.seeds:
        for rate in args.rates:
            y_noisy, bad = corrupt(data.target[train], rate, seed)
            for name in args.methods:
                if (name, rate, seed) in done:
                    continue
                model = make_method(name, args, weights, seed)
                X_train, X_test = inputs["deep" if name in DEEP else "hog"]
                tic = time.perf_counter()
                if name in DEEP:
                    model.fit(X_train, y_noisy, groups=data.subject[train])
                else:
                    model.fit(X_train, y_noisy)
                seconds = time.perf_counter() - tic
                test_mae = mae(data.target[test], model.predict(X_test))
                w = sample_weights(name, model, X_train, y_noisy)
                distance = label_distances(name, model, X_train, y_noisy)
                row = {"method": name, "rate": rate, "seed": seed,
                       "test_mae": test_mae.tolist(), "test_mean": float(test_mae.mean()),
                       "seconds": seconds, "n_corrupted": int(bad.sum())}
                if w is not None:
                    row.update(weights_corrupted=w[bad].tolist(), weights_clean=w[~bad].tolist())
                    student = model.gllim_ if name in DEEP else model
                    row["dof"] = student.dof_.tolist()
                if distance is not None:
                    row.update(distance_corrupted=distance[bad].tolist(),
                               distance_clean=distance[~bad].tolist())
                if hasattr(model, "history_"):
                    row["val_curve"] = [None if v is None else float(np.mean(v))
                                        for v in model.history_[:, "val_mae"]]
                runs.append(row)
                shown = {k: (round(v, 3) if isinstance(v, float) else v)
                         for k, v in row.items() if k in ("method", "rate", "seed", "test_mae",
                                                          "test_mean", "seconds")}
                print(json.dumps(shown), flush=True)
                with atomic_write(path, "w", encoding="utf-8") as handle:
                    json.dump({"args": {k: str(v) for k, v in vars(args).items()},
                               "runs": runs}, handle, indent=1)
    return runs


def summarise(runs):
    """The table (mean +- std over seeds of the mean test error) and the goals."""
    table = {}
    for r in runs:
        table.setdefault(r["method"], {}).setdefault(r["rate"], {})[r["seed"]] = r["test_mean"]
    rates = sorted({r["rate"] for r in runs})
    print("method".ljust(16) + "".join(f"{100 * rate:>16.0f} %" for rate in rates))
    for method in METHODS:
        if method not in table:
            continue
        cells = []
        for rate in rates:
            values = np.array(list(table[method].get(rate, {}).values()))
            spread = values.std(ddof=1) if len(values) > 1 else 0.0
            cells.append(f"{values.mean():8.2f} +- {spread:5.2f}" if len(values) else "")
        print(method.ljust(16) + "".join(f"{c:>18}" for c in cells))
    weights = [(r["rate"], np.mean(r["weights_corrupted"]) if r["weights_corrupted"] else None,
                np.mean(r["weights_clean"])) for r in runs
               if r["method"] == "Student head" and "weights_clean" in r]
    for rate, corrupted, clean in weights:
        if corrupted is not None:
            print(f"Student head, {100 * rate:.0f} %: mean weight corrupted {corrupted:.3f}, "
                  f"clean {clean:.3f}")
    # How well each score tells clean training pairs from corrupted ones (0.5: chance).
    for method in METHODS:
        for key, sign, what in (("weights", 1, "Student weights"),
                                ("distance", -1, "label distance under p(y | x)")):
            aucs = [(r["rate"], r["seed"], separation(sign * np.array(r[f"{key}_clean"]),
                                                      sign * np.array(r[f"{key}_corrupted"])))
                    for r in runs if r["method"] == method and r.get(f"{key}_corrupted")]
            if aucs:
                shown = ", ".join(f"{100 * rate:.0f} % seed {seed}: {auc:.3f}"
                                  for rate, seed, auc in aucs)
                print(f"{method}, ROC AUC of the {what}: {shown}")
    gaussian, l2 = table.get("GLLiM head", {}), table.get("L2 head", {})
    for name in ("Student head", "Student head, no u"):
        student = table.get(name, {})
        if 0.0 in student and 0.2 in student:
            seeds = sorted(set(student[0.0]) & set(student[0.2]))
            ratio = [student[0.2][s] / student[0.0][s] for s in seeds]
            print(f"{name}, 20 % / clean error: {np.round(ratio, 3).tolist()} "
                  "(goal <= 1.15)")
            below = [student[0.2][s] < min(gaussian.get(0.2, {}).get(s, np.inf),
                                            l2.get(0.2, {}).get(s, np.inf)) for s in seeds]
            print(f"{name} below the L2 and GLLiM heads at 20 %, per seed: {below}")
        if 0.0 in student and 0.0 in gaussian:
            seeds = sorted(set(student[0.0]) & set(gaussian[0.0]))
            cost = [student[0.0][s] / gaussian[0.0][s] for s in seeds]
            print(f"clean labels, {name} / GLLiM head: {np.round(cost, 3).tolist()} "
                  "(goal <= 1.05)")


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in METHODS:
        rows = [r for r in runs if r["method"] == method]
        if not rows:
            continue
        rates = sorted({r["rate"] for r in rows})
        values = [[r["test_mean"] for r in rows if r["rate"] == rate] for rate in rates]
        left.errorbar(100 * np.array(rates), [np.mean(v) for v in values],
                      yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in values],
                      marker="o", capsize=3, label=method,
                      linestyle="--" if method.startswith("HOG") else "-")
    left.set_xlabel("training labels replaced (%)")
    left.set_ylabel("test mean absolute error (degrees)")
    left.legend()
    left.set_title("error against corruption rate (mean +- std over seeds)")
    # The deep Student head's weights (those of HOG-IR's Student model without it).
    shown = "Student head" if any(r["method"] == "Student head" for r in runs) \
        else "HOG-IR Student"
    students = [r for r in runs if r["method"] == shown and r["n_corrupted"]]
    if students:
        rate = max(r["rate"] for r in students)
        chosen = [r for r in students if r["rate"] == rate]
        values = np.concatenate([r["weights_clean"] + r["weights_corrupted"] for r in chosen])
        values = values[values > 0]
        # Log bins: the weights of a t mixture span orders of magnitude.
        bins = np.logspace(np.log10(values.min()), np.log10(values.max()), 40)
        right.set_xscale("log")
        right.hist(np.concatenate([r["weights_clean"] for r in chosen]), bins=bins,
                   alpha=0.6, density=True, label="clean labels")
        right.hist(np.concatenate([r["weights_corrupted"] for r in chosen]), bins=bins,
                   alpha=0.6, density=True, label="corrupted labels")
        right.set_title(f"{shown}, {100 * rate:.0f} % corrupted: sample weights")
        right.set_xlabel("sum_k p(k | x, y) E[u | x, y, k] / alpha_k")
        right.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    tic = time.perf_counter()
    runs = run(args)
    summarise(runs)
    plot(runs, args.output_dir / "label_noise.png")
    print(f"done in {time.perf_counter() - tic:.0f} s", flush=True)


if __name__ == "__main__":
    main()

# sphinx_gallery_thumbnail_path = "user_guide/images/label_noise.png"
