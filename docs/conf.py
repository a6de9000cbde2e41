"""Sphinx configuration for the gllim_sk documentation.

Build with warnings as errors (as CI does)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Only the fast ``examples/plot_*.py`` scripts are executed by sphinx-gallery; the
reproduction scripts (``reproduce_table1.py``, ``table*_*.py``) are rendered as
source only, because they take minutes to hours.
"""

import os
import re
import sys
import warnings
from pathlib import Path

DOCS_DIR = Path(__file__).resolve().parent
REPO_ROOT = DOCS_DIR.parent
# Build against the working tree even when the package is not pip-installed.
sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("MPLBACKEND", "Agg")
import matplotlib

matplotlib.use("Agg")

import gllim_sk

# -- Project information ------------------------------------------------------
project = "gllim_sk"
author = "The gllim_sk developers"
copyright = "2026, The gllim_sk developers"
version = release = gllim_sk.__version__

# -- General configuration ----------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    # Ships MathJax 3 and copies it into _static/mathjax of the built HTML (mathjax_path
    # points there), so that equations render the same with and without a network.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
default_role = "literal"
nitpicky = False

# Stub pages of the API reference are generated into docs/generated (gitignored).
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": False, "inherited-members": False}
autodoc_typehints = "none"

# numpydoc renders the member tables itself from the class docstring; autosummary's
# class template lists methods, so switch numpydoc's own member lists off to avoid
# duplicate, unresolvable toctree entries.
numpydoc_show_class_members = False
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

# -- sphinx-gallery -----------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": str(REPO_ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    # Execute only the fast plot_*.py examples; everything else is shown as source.
    "filename_pattern": re.escape(os.sep) + "plot_",
    # The output folder of the reproduction scripts is not part of the gallery.
    "ignore_pattern": r"(__init__\.py|/output/)",
    "within_subsection_order": "FileNameSortKey",
    "image_scrapers": ("matplotlib",),
    "matplotlib_animations": False,
    "remove_config_comments": True,
    "download_all_examples": False,
    "plot_gallery": "True",
    "abort_on_example_error": True,
    "reset_modules": ("matplotlib", "seaborn"),
    "show_memory": False,
    "backreferences_dir": "gen_modules/backreferences",
    "doc_module": ("gllim_sk",),
    "first_notebook_cell": None,
    "min_reported_time": 1,
    # The execution-time summary pages load jQuery and DataTables from CDNs; the docs
    # must read the same without a network, and each example page states its own time.
    "write_computation_times": False,
}

# -- HTML output --------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"gllim_sk {release}"
html_static_path = []
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_sidebars = {"index": [], "installation": []}
html_context = {"default_mode": "light"}

# Matplotlib inside the gallery scripts should not warn about the missing display.
warnings.filterwarnings("ignore", category=UserWarning, message=".*non-interactive.*")


# -- API completeness check ----------------------------------------------------
# Every public name (``__all__``) of the package's public modules must appear in
# the API reference; a missing one is a build warning, hence an error under -W.
PUBLIC_MODULES = (
    "gllim_sk",
    "gllim_sk.datasets",
    "gllim_sk.features",
    "gllim_sk.metrics",
    "gllim_sk.pipelines",
    "gllim_sk.deep",
)


def _check_api_reference(app):
    import importlib

    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    api_text = (DOCS_DIR / "api.rst").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s{3,}([A-Za-z_][\w.]*)\s*$", api_text, flags=re.MULTILINE))
    listed_short = {name.rsplit(".", 1)[-1] for name in listed}
    for module_name in PUBLIC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            logger.warning("API reference: cannot import %s (%s)", module_name, exc)
            continue
        for name in getattr(module, "__all__", ()):
            if name.startswith("_"):
                continue
            if name not in listed_short:
                logger.warning(
                    "API reference: public name %s.%s is missing from docs/api.rst",
                    module_name,
                    name,
                )


# -- Docstring normalisation ---------------------------------------------------
# Two plain-text habits of numpydoc docstrings that reST misreads, fixed before numpydoc
# parses them: a backslash continuing a long "name : type" line in a raw docstring, and
# fitted-attribute names (``n_features_in_``) inside a type, which reST would take for
# hyperlink references.
_TYPE_LINE = re.compile(r"^(\s*[\w*, ]+ : )(.*)$")
_TRAILING_UNDERSCORE = re.compile(r"(?<![`\w])([A-Za-z]\w*_)(?![`\w])")


def _normalise_docstring(app, what, name, obj, options, lines):
    joined = []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1].rstrip() + " " + line.strip()
        else:
            joined.append(line)
    for i, line in enumerate(joined):
        match = _TYPE_LINE.match(line)
        if match:
            joined[i] = match.group(1) + _TRAILING_UNDERSCORE.sub(r"``\1``", match.group(2))
    lines[:] = joined


def setup(app):
    app.connect("builder-inited", _check_api_reference)
    # Before numpydoc (priority 500) so that it parses the normalised text.
    app.connect("autodoc-process-docstring", _normalise_docstring, priority=100)
