"""The built HTML documentation, opened in headless Chromium with the network off.

Checks what a reader sees: every equation typeset by the MathJax copy that ships with
the docs (no TeX source left on the page, no MathJax error), no page loading anything
from another host, and a gallery in which each example shows a figure of its own rather
than sphinx-gallery's placeholder.

Needs the built docs and a Chromium binary, so it is marked ``slow`` (out of the default
suite); ``.ci/run`` builds the docs, installs Debian's ``chromium`` and then runs::

    GLLIM_SK_REQUIRE_DOCS_CHECK=1 python -m pytest -m slow tests/test_docs_browser.py

Without the docs or the browser the tests skip and say what is missing, unless
``GLLIM_SK_REQUIRE_DOCS_CHECK=1``, under which a missing piece is a failure. Set
``GLLIM_SK_DOCS_HTML`` to check docs built elsewhere and ``CHROMIUM`` to pick the binary.
"""

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS_DIR = REPO_ROOT / "docs"
EXAMPLES_DIR = REPO_ROOT / "examples"
HTML_DIR = Path(os.environ.get("GLLIM_SK_DOCS_HTML", DOCS_DIR / "_build" / "html"))
REQUIRED = os.environ.get("GLLIM_SK_REQUIRE_DOCS_CHECK", "") not in ("", "0")

# The user-guide pages that carry the mathematics.
MATH_PAGES = (
    "user_guide/gllim.html",
    "user_guide/robust.html",
    "user_guide/posterior.html",
    "user_guide/deep.html",
)
GALLERY_PAGE = "auto_examples/index.html"


def _missing(reason):
    if REQUIRED:
        pytest.fail(f"{reason} (GLLIM_SK_REQUIRE_DOCS_CHECK is set)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def html_dir():
    if not (HTML_DIR / "index.html").is_file():
        _missing(f"no built documentation in {HTML_DIR}; build it first with "
                 "`python -m sphinx -W --keep-going -b html docs docs/_build/html`")
    return HTML_DIR


@pytest.fixture(scope="module")
def chromium():
    candidates = [os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"]
    for name in filter(None, candidates):
        path = shutil.which(name)
        if path:
            return path
    _missing("no headless Chromium found (on Debian: `apt-get install chromium`, "
             "or set CHROMIUM to the binary)")


@pytest.fixture(scope="module")
def render(chromium, html_dir, tmp_path_factory):
    """Return the DOM of a built page after its scripts ran, with no network at all."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    cache = {}

    def _render(page):
        if page not in cache:
            path = html_dir / page
            assert path.is_file(), f"{page} is missing from the built docs"
            command = [
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}",
                # No network: no host name resolves, and any proxied fetch goes to a
                # closed local port. file:// pages and their files still load.
                "--host-resolver-rules=MAP * ~NOTFOUND",
                "--proxy-server=127.0.0.1:9",
                # Run the page's scripts (MathJax) to completion before dumping the DOM.
                "--virtual-time-budget=30000",
                "--dump-dom", path.as_uri(),
            ]
            done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                                  check=False)
            assert done.returncode == 0 and "</html>" in done.stdout, (
                f"chromium failed on {page} (exit {done.returncode}):\n{done.stderr[-2000:]}")
            cache[page] = done.stdout
        return cache[page]

    return _render


class _Page(HTMLParser):
    """Elements, visible text and gallery thumbnails of an HTML document."""

    _HIDDEN = {"script", "style", "template", "noscript"}
    _VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
             "source", "track", "wbr"}

    def __init__(self, html):
        super().__init__(convert_charrefs=True)
        self.tags = {}  # tag name -> count
        self.math_elements = 0  # Sphinx's <span/div class="math ..."> before MathJax
        self.text = []  # visible text nodes
        self.math_text = []  # text nodes inside class="math" but outside MathJax's output
        self.thumbnails = []  # [img src, link href] per gallery entry
        self.external = []  # resources loaded from another host
        self._stack = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        classes = (attrs.get("class") or "").split()
        if "math" in classes and tag in ("span", "div"):
            self.math_elements += 1
        if "data-mjx-error" in attrs:
            self.tags["data-mjx-error"] = self.tags.get("data-mjx-error", 0) + 1
        loaded = attrs.get("src") if tag in ("script", "img", "iframe") else None
        if tag == "link" and "stylesheet" in (attrs.get("rel") or "").split():
            loaded = attrs.get("href")
        if loaded and re.match(r"^(https?:)?//", loaded):
            self.external.append(f"<{tag}> {loaded}")
        in_thumb = any("sphx-glr-thumbcontainer" in c for _, c, _ in self._stack)
        if "sphx-glr-thumbcontainer" in classes:
            self.thumbnails.append([None, None])
        elif in_thumb and tag == "img" and self.thumbnails[-1][0] is None:
            self.thumbnails[-1][0] = attrs.get("src")
        elif in_thumb and tag == "a" and self.thumbnails[-1][1] is None:
            self.thumbnails[-1][1] = attrs.get("href")
        if tag not in self._VOID:
            self._stack.append((tag, " ".join(classes), "math" in classes))

    def handle_endtag(self, tag):
        # Pop to the matching open element (HTML lets some end tags be omitted).
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                break

    def handle_data(self, data):
        tags = [t for t, _, _ in self._stack]
        if self._HIDDEN.intersection(tags) or not data.strip():
            return
        self.text.append(data)
        in_math = any(is_math for _, _, is_math in self._stack)
        if in_math and not any(t.startswith("mjx-") for t in tags):
            self.math_text.append(data)


# --- equations -----------------------------------------------------------------------


@pytest.mark.parametrize("page", MATH_PAGES)
def test_equations_are_typeset_offline(page, html_dir, render):
    source = _Page((html_dir / page).read_text(encoding="utf-8"))
    assert source.math_elements > 0, f"{page} has no equation to check"
    assert any("\\" in t for t in source.text), "the built page should hold TeX before MathJax"

    shown = _Page(render(page))
    # One MathJax output element per equation Sphinx wrote.
    assert shown.tags.get("mjx-container", 0) == source.math_elements, (
        f"{page}: {shown.tags.get('mjx-container', 0)} typeset equations for "
        f"{source.math_elements} in the page")
    assert shown.tags.get("mjx-merror", 0) == 0 and shown.tags.get("data-mjx-error", 0) == 0, (
        f"{page}: MathJax reported a TeX error")
    assert shown.math_text == [], f"{page}: TeX left untypeset: {shown.math_text[:3]}"
    text = "".join(shown.text)
    for delimiter in ("\\(", "\\)", "\\[", "\\]"):
        assert delimiter not in text, (
            f"{page}: {delimiter!r} in the rendered text near "
            f"{text[max(0, text.index(delimiter) - 60):text.index(delimiter) + 60]!r}")


def test_no_page_loads_anything_from_another_host(html_dir):
    # What renders offline must be all there is: no CDN script or stylesheet anywhere.
    pages = sorted(html_dir.rglob("*.html"))
    assert len(pages) > 20
    external = {}
    for path in pages:
        found = _Page(path.read_text(encoding="utf-8")).external
        if found:
            external[str(path.relative_to(html_dir))] = found
    assert external == {}
    assert (html_dir / "_static" / "mathjax" / "tex-chtml.js").is_file()


# --- gallery thumbnails --------------------------------------------------------------


def _example_figure(script, html_dir):
    """The figure an example's thumbnail should show, from its sphinx-gallery settings."""
    source = script.read_text(encoding="utf-8")
    path = re.search(r"^# sphinx_gallery_thumbnail_path = ['\"](.+)['\"]\s*$", source,
                     flags=re.MULTILINE)
    if path:
        return DOCS_DIR / path.group(1)  # relative to docs/, as sphinx-gallery reads it
    number = re.search(r"^# sphinx_gallery_thumbnail_number = (-?\d+)\s*$", source,
                       flags=re.MULTILINE)
    number = int(number.group(1)) if number else 1
    figures = sorted((html_dir / "_images").glob(f"sphx_glr_{script.stem}_[0-9][0-9][0-9].png"))
    assert figures, f"{script.name} draws no figure and names no thumbnail_path"
    return figures[number - 1] if number > 0 else figures[number]


def _signature(path, size=48):
    """Grey levels in [0, 1] of the drawn part of an image, at a fixed size.

    A thumbnail is its figure scaled into a transparent box; cropping both to what is
    drawn (opaque) makes them comparable.
    """
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGBA")
    box = image.getchannel("A").getbbox()
    assert box is not None, f"{path} is fully transparent"
    image = image.crop(box)
    flat = Image.new("RGBA", image.size, (255, 255, 255, 255))
    flat.alpha_composite(image)
    grey = flat.convert("L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=float) / 255.0


def test_every_example_has_a_thumbnail_of_its_own(html_dir, render):
    pytest.importorskip("PIL", reason="Pillow compares the thumbnails")
    import sphinx_gallery

    placeholder = Path(sphinx_gallery.__file__).parent / "_static" / "no_image.png"
    assert placeholder.is_file(), "sphinx-gallery's placeholder thumbnail moved"

    gallery = _Page(render(GALLERY_PAGE))
    entries = {}
    for src, href in gallery.thumbnails:
        assert src and href, f"a gallery entry without image or link: {src!r}, {href!r}"
        stem = href.split("#")[0].removesuffix(".html")
        assert Path(src).name == f"sphx_glr_{stem}_thumb.png", (stem, src)
        entries[stem] = (html_dir / Path(GALLERY_PAGE).parent / src).resolve()
    scripts = {p.stem: p for p in EXAMPLES_DIR.glob("*.py")}
    assert sorted(entries) == sorted(scripts), "one gallery entry per example script"

    figures = {stem: _example_figure(scripts[stem], html_dir) for stem in scripts}
    for stem, figure in figures.items():
        assert figure.is_file(), f"{stem}: its thumbnail figure {figure} does not exist"
    candidates = {stem: _signature(figure) for stem, figure in figures.items()}
    candidates["<sphinx-gallery placeholder>"] = _signature(placeholder)

    thumbs = {}
    for stem, thumb in entries.items():
        assert thumb.is_file(), f"{stem}: thumbnail {thumb} missing"
        thumbs[stem] = _signature(thumb)
        distance = {name: float(np.abs(thumbs[stem] - sig).mean())
                    for name, sig in candidates.items()}
        nearest = min(distance, key=distance.get)
        # The thumbnail is its own figure scaled down: nearest to it of all the gallery's
        # figures and the placeholder, and close to it in absolute terms.
        assert nearest == stem, f"{stem}: thumbnail looks like {nearest} ({distance})"
        assert distance[stem] < 0.03, f"{stem}: thumbnail differs from its figure ({distance})"
        assert distance["<sphinx-gallery placeholder>"] > 0.05, f"{stem}: placeholder-like"

    # All different from each other.
    names = sorted(thumbs)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            assert np.abs(thumbs[first] - thumbs[second]).mean() > 0.01, (first, second)
