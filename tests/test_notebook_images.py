"""Every image a notebook shows is inside the notebook file, and every lesson has a diagram.

A notebook opened from GitHub in Colab cannot load an image by a relative path, and a reader may be
offline, so an image in a markdown cell must be a cell attachment (`![alt](attachment:NAME.png)`,
the attachment present in the same cell and a whole PNG or well-formed SVG) or a `data:` URI; an
HTML output may show only `data:` images. No `http(s)://` image and no relative path.

One exception, the Open-in-Colab badge under each notebook's title:
`[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab...)`.
It is allowed only in the first cell, only with alt text and only as the image of a link to Colab.
Offline it degrades to its alt text, still a link, and what it links to needs the network anyway;
embedding it would copy Google's badge into every notebook for nothing. Anything else remote fails.

Every attachment must be shown by its cell (an unreferenced one is dead weight that JupyterLab
drops on the next edit). A lesson's diagram is a markdown cell showing an image attachment or a
`diagram-*` code cell whose saved output is a whole PNG (the two forms of `scripts/diagrams.py
embed`). The checks come from scripts/diagrams.py (`python scripts/diagrams.py check` prints the
same problems); a missing diagram is fixed with `python scripts/diagrams.py embed`.
"""

import base64
import io
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"


from scripts import diagrams  # noqa: E402  (scripts/ is a namespace package at the course root)

ALL = diagrams.notebook_paths(NOTEBOOK_DIR)  # (path, is a lesson), solutions included
LESSONS = [p for p, lesson in ALL if lesson]


@pytest.mark.parametrize("path", [p for p, _ in ALL], ids=[str(p.relative_to(NOTEBOOK_DIR)) for p, _ in ALL])
def test_every_image_is_inside_the_notebook(path):
    found = diagrams.image_problems(nbformat.read(path, as_version=4), path.name)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", LESSONS, ids=[p.name for p in LESSONS])
def test_lesson_has_a_diagram(path):
    nb = nbformat.read(path, as_version=4)
    found = [p for p in diagrams.image_problems(nb, path.name, lesson=True) if "no diagram" in p]
    assert not found, found[0] + " (fix: python scripts/diagrams.py embed)"


def test_every_lesson_is_found():
    # the parametrised tests above pass vacuously if the glob stops matching
    assert [p.name[:2] for p in LESSONS] == [f"{n:02d}" for n in range(1, len(LESSONS) + 1)]
    assert len(LESSONS) >= 8


# ---- the rules catch what they look for -------------------------------------------------------

def _png(width=2, height=1) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buf, format="PNG")
    return buf.getvalue()


PNG64 = base64.b64encode(_png()).decode()
SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4"/></svg>'
BADGE = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
         "(https://colab.research.google.com/github/me/course/blob/main/notebooks/01_x.ipynb)")


def _problems(*cells, lesson=False):
    """image_problems of a notebook made of (source, attachments) markdown cells."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src, attachments=att) if att else nbformat.v4.new_markdown_cell(src)
                for src, att in cells]
    return diagrams.image_problems(nb, "nb.ipynb", lesson=lesson)


@pytest.mark.parametrize("cells, lesson", [
    ([("![a diagram](attachment:d.png)", {"d.png": {"image/png": PNG64}})], True),
    ([("![svg](attachment:d.svg)", {"d.svg": {"image/svg+xml": SVG}})], True),
    ([("![svg](attachment:d.svg)", {"d.svg": {"image/svg+xml": base64.b64encode(SVG.encode()).decode()}})], True),
    ([("# Title\n\n" + BADGE, None)], False),
    ([(f"![inline](data:image/png;base64,{PNG64})", None)], False),
    ([(f'<img src="data:image/png;base64,{PNG64}" width=300>', None)], False),
    ([("Write `![alt](figure.png)` to show a file, or:\n```\n![x](http://a/b.png)\n```", None)], False),
    ([("a [link](https://example.com) is not an image", None)], False),
], ids=["png-attachment", "svg-text-attachment", "svg-base64-attachment", "badge-in-first-cell", "md-data-uri",
        "html-data-uri", "code-is-not-an-image", "links-are-fine"])
def test_images_inside_the_notebook_pass(cells, lesson):
    assert _problems(*cells, lesson=lesson) == []


@pytest.mark.parametrize("cells, expected", [
    ([("![a diagram](figures/d.png)", None)], "not inside the notebook"),
    ([("![remote](https://example.com/d.png)", None)], "not inside the notebook"),
    ([('<img src="d.png" alt="d">', None)], "not inside the notebook"),
    ([("![d][fig]\n\n[fig]: https://example.com/d.png", None)], "not inside the notebook"),
    ([("![a diagram](attachment:d.png)", None)], "which the cell does not have"),
    ([("![a diagram](attachment:d.png)", {"other.png": {"image/png": PNG64}})], "which the cell does not have"),
    ([("no image here", {"d.png": {"image/png": PNG64}})], "is not shown by the cell"),
    ([("![a](attachment:d.png)", {"d.png": {"image/png": base64.b64encode(b"GIF89a....").decode()}})],
     "is not a whole PNG"),
    ([("![a](attachment:d.png)", {"d.png": {"image/png": base64.b64encode(_png()[:40]).decode()}})],
     "is not a whole PNG"),
    ([("![a](attachment:d.png)", {"d.png": {"image/png": "not base64 at all!"}})], "is not valid base64"),
    ([("![a](attachment:d.svg)", {"d.svg": {"image/svg+xml": "<svg><g></svg>"}})], "is not well-formed SVG"),
    ([("![a](attachment:d.svg)", {"d.svg": {"image/svg+xml": SVG.replace("<rect", '<image href="x.png"/><rect')}})],
     "loads a file from outside itself"),
    ([("![a](attachment:d.jpg)", {"d.jpg": {"image/jpeg": PNG64}})], "use image/png or image/svg+xml"),
    ([("![broken](data:image/png;base64,AAAA)", None)], "is not a whole PNG"),
    ([("# Title", None), (BADGE, None)], "not inside the notebook"),  # the badge, but not under the title
    ([(BADGE.replace("Open In Colab", ""), None)], "not inside the notebook"),  # a badge without alt text
    ([("# A lesson without a picture", None)], "no diagram"),
], ids=["relative-path", "remote-url", "html-img", "reference-style", "attachment-missing", "attachment-misnamed",
        "attachment-unreferenced", "not-a-png", "truncated-png", "bad-base64", "bad-svg", "svg-loads-a-file",
        "jpeg", "bad-data-uri", "badge-elsewhere", "badge-without-alt", "lesson-without-diagram"])
def test_images_outside_the_notebook_fail(cells, expected):
    found = _problems(*cells, lesson=expected == "no diagram")
    assert found and any(expected in p for p in found), found


def test_outputs_may_show_only_data_images():
    nb = nbformat.v4.new_notebook()
    html = {"text/html": '<img src="https://example.com/x.png">', "text/plain": "x"}
    good = {"text/html": f'<img src="data:image/png;base64,{PNG64}">', "text/plain": "x"}
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output("display_data", data=d)
                                                        for d in (html, good)])]
    found = diagrams.image_problems(nb, "nb.ipynb")
    assert len(found) == 1 and "is not inside the notebook" in found[0], found


def test_every_diagram_has_a_lesson_an_id_and_a_caption():
    names = {p.name for p in LESSONS}
    for d in diagrams.DIAGRAMS:
        assert d.notebook in names, f"{d.cell_id}: no notebooks/{d.notebook}"
        assert re.fullmatch(r"diagram-[a-z0-9-]+", d.cell_id), d.cell_id
        assert d.source().startswith(f"![{d.alt}](attachment:{d.name})")
        assert d.caption.endswith(".") and d.caption.count(". ") == 0, f"{d.cell_id}: one sentence, please"
    assert len({d.cell_id for d in diagrams.DIAGRAMS}) == len(diagrams.DIAGRAMS)


def test_embed_inserts_once_after_the_anchor_then_replaces():
    d = diagrams.DIAGRAMS[0]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), nbformat.v4.new_markdown_cell(f"intro\n\n{d.anchor}\n"),
                nbformat.v4.new_code_cell("x = 1")]
    png, newer = _png(), _png(3, 1)
    assert diagrams.embed(nb, d, png)
    assert [c.get("id") for c in nb.cells].index(d.cell_id) == 2
    assert not diagrams.embed(nb, d, png)  # the same bytes: nothing to do
    assert diagrams.embed(nb, d, newer)
    cells = [c for c in nb.cells if c.get("id") == d.cell_id]
    assert len(cells) == 1 and len(nb.cells) == 4
    assert base64.b64decode(cells[0].attachments[d.name]["image/png"]) == newer
    nbformat.validate(nb)
    assert diagrams.image_problems(nb, "nb.ipynb", lesson=True) == []


def _executed_notebook(anchor):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), nbformat.v4.new_code_cell("1", execution_count=1),
                nbformat.v4.new_markdown_cell(anchor), nbformat.v4.new_code_cell("2", execution_count=2, outputs=[
                    nbformat.v4.new_output("execute_result", data={"text/plain": "2"}, execution_count=2)])]
    return nb


def test_embed_as_output_numbers_the_cells_as_a_fresh_run_would():
    d = diagrams.DIAGRAMS[0]
    nb = _executed_notebook(d.anchor)
    assert diagrams.embed(nb, d, _png(), "output")
    assert [c.get("id") for c in nb.cells][3:5] == [d.cell_id, f"{d.cell_id}-caption"]
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == [1, 2, 3] and code[2].outputs[0].execution_count == 3
    assert f"show({d.name!r})" in code[1].source
    assert not diagrams.embed(nb, d, _png(), "output")
    nbformat.validate(nb)
    assert diagrams.image_problems(nb, "nb.ipynb", lesson=True) == []


def test_embed_switches_forms_without_leaving_a_copy():
    d = diagrams.DIAGRAMS[0]
    nb = _executed_notebook(d.anchor)
    for form in ("output", "attachment", "output"):
        assert diagrams.embed(nb, d, _png(), form)
        ids = [c.get("id") for c in nb.cells if c.get("id", "").startswith(d.cell_id)]
        assert ids == ([d.cell_id, f"{d.cell_id}-caption"] if form == "output" else [d.cell_id])
    assert [c.execution_count for c in nb.cells if c.cell_type == "code"] == [1, 2, 3]


def test_a_diagram_output_must_be_a_whole_png():
    nb = nbformat.v4.new_notebook()
    bad = {"image/png": base64.b64encode(_png()[:40]).decode(), "text/plain": "x"}
    nb.cells = [nbformat.v4.new_code_cell("show()", id="diagram-x", outputs=[nbformat.v4.new_output("display_data", data=bad)])]
    found = diagrams.image_problems(nb, "nb.ipynb", lesson=True)
    assert any("is not a whole PNG" in p for p in found) and any("no diagram" in p for p in found), found
