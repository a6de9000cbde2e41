"""Gallery thumbnails for the two long examples that print their results but draw no figure.

``examples/table2_components.py`` writes ``table2.md``/``table2.csv`` and
``examples/mechanism_affine_mixture.py`` prints a summary; their measured numbers are
recorded in the user guide (``docs/user_guide/reproducing.rst``, Table 2, and
``docs/user_guide/deep.rst``, "A problem with a known answer"). This script reads those
tables from the pages, so that the thumbnails show exactly the numbers the docs state,
and draws one figure per script. Run from the repository root::

    python docs/_static/thumbnails/plot_recorded_results.py
"""

import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
USER_GUIDE = HERE.parents[1] / "user_guide"
REPO_ROOT = HERE.parents[2]
sys.path.insert(0, str(REPO_ROOT))

from gllim_sk._files import save_figure

# Shaped like sphinx-gallery's thumbnail box (400 x 280), so that nothing is padded away.
FIGSIZE = (6.0, 4.2)
ANGLES = ("pitch", "yaw", "roll")


def read_table2(text):
    """``{data set: {K: (pitch, yaw, roll)}}`` from the Table 2 section of reproducing.rst."""
    section = text.split("Table 2: the number of components", 1)[1]
    section = section.split("Table 4: the size of the training set", 1)[0]
    header = re.search(r"^Data\s+(K = \d+.*)$", section, flags=re.MULTILINE)
    if header is None:
        raise ValueError("reproducing.rst: no 'Data  K = ...' header in the Table 2 section")
    ks = [int(k) for k in re.findall(r"K = (\d+)", header.group(1))]
    triple = r"(\d+\.\d+) / (\d+\.\d+) / (\d+\.\d+)"
    table = {}
    for match in re.finditer(r"^(biwi|s2g|ssv)\s+(.*)$", section, flags=re.MULTILINE):
        cells = re.findall(triple, match.group(2))
        if len(cells) != len(ks):
            raise ValueError(f"reproducing.rst: Table 2 row {match.group(1)!r} has "
                             f"{len(cells)} cells for {len(ks)} values of K")
        table[match.group(1)] = {k: tuple(map(float, c)) for k, c in zip(ks, cells, strict=True)}
    if set(table) != {"biwi", "s2g", "ssv"}:
        raise ValueError(f"reproducing.rst: Table 2 rows found: {sorted(table)}")
    return table


MECHANISM_ROWS = {
    "initial (no fine-tuning)": "initial\n(no fine-tuning)",
    "joint EM": "joint EM",
    "L2 fine-tuning, same epochs": "L2 fine-tuning",
    "oracle GLLiM on ``z``": "oracle GLLiM\non z",
}


def read_mechanism(text):
    """``{model: (mae, mae sd, r2 or None, r2 sd or None)}`` from deep.rst's known-answer table."""
    section = text.split("A problem with a known answer", 1)[1]
    number = r"(\d+\.\d+) \+- (\d+\.\d+)"
    rows = {}
    for name in MECHANISM_ROWS:
        match = re.search(rf"^{re.escape(name)}\s+{number}(?:\s+{number})?", section,
                          flags=re.MULTILINE)
        if match is None:
            raise ValueError(f"deep.rst: no row {name!r} in 'A problem with a known answer'")
        rows[name] = tuple(None if v is None else float(v) for v in match.groups())
    return rows


def plot_table2(table, path):
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for name, by_k in table.items():
        ks = sorted(by_k)
        means = [sum(by_k[k]) / len(ANGLES) for k in ks]
        ax.plot(ks, means, marker="o", label=f"synthetic {name!r}")
        best = min(ks, key=lambda k: sum(by_k[k]))
        ax.scatter([best], [sum(by_k[best]) / len(ANGLES)], s=160, facecolors="none",
                   edgecolors="black", zorder=3)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("number of components K")
    ax.set_ylabel("CV error, mean of pitch/yaw/roll (deg)")
    ax.set_title("Table 2, quick preset: error against K\n(circled: best K)")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.2 * (high - low))  # room for the legend above the lines
    ax.legend(loc="upper center", ncols=3, fontsize="small")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def plot_mechanism(rows, path):
    fig, (ax_mae, ax_r2) = plt.subplots(1, 2, figsize=FIGSIZE, width_ratios=(3, 2))
    names = list(MECHANISM_ROWS)
    positions = range(len(names))
    ax_mae.barh(positions, [rows[n][0] for n in names], xerr=[rows[n][1] for n in names],
                color=["C0", "C1", "C2", "C7"], capsize=3)
    ax_mae.set_yticks(positions, [MECHANISM_ROWS[n] for n in names], fontsize="small")
    ax_mae.invert_yaxis()
    ax_mae.set_xlabel("test MAE (5 seeds)")
    with_r2 = [n for n in names if rows[n][2] is not None]
    ax_r2.bar(range(len(with_r2)), [rows[n][2] for n in with_r2],
              yerr=[rows[n][3] for n in with_r2], color=["C0", "C1"], capsize=3)
    ax_r2.set_xticks(range(len(with_r2)), [MECHANISM_ROWS[n].split("\n")[0] for n in with_r2],
                     fontsize="small")
    ax_r2.set_ylim(0, 1)
    ax_r2.set_ylabel("affine $R^2$ per component")
    fig.suptitle("Known-answer problem: joint EM against L2")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def main():
    reproducing = (USER_GUIDE / "reproducing.rst").read_text(encoding="utf-8")
    deep = (USER_GUIDE / "deep.rst").read_text(encoding="utf-8")
    plot_table2(read_table2(reproducing), HERE / "table2_components.png")
    plot_mechanism(read_mechanism(deep), HERE / "mechanism_affine_mixture.png")
    print(f"wrote table2_components.png and mechanism_affine_mixture.png to {HERE}")


if __name__ == "__main__":
    main()
