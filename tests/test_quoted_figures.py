"""Numbers the notebooks' text quotes from their own outputs stay the committed outputs' numbers.

A quoted figure is marked in the markdown by an HTML comment right after it, naming the code
cell whose output it quotes:

    the two agree to 4.3e-6<!--out:cache-vs-full-->, float32 rounding

The comment does not render (JupyterLab, GitHub, Colab). This test reads each marked figure and
checks that it appears, digit for digit, in the text output of the cell with that id, so that
re-executing a notebook without updating its text fails here instead of misleading a reader.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))
# the figure: the run of non-space characters before the marker, less trailing punctuation and markup
MARKER = re.compile(r"(\S+?)[*_`)]*<!--out:([A-Za-z0-9_-]+)-->")


def plain_exponent(text: str) -> str:
    return re.sub(r"e([+-]?)0+(\d)", r"e\1\2", text)  # 4.3e-06 as printed, 4.3e-6 as written


def cell_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append("".join(out.get("text", "")))
        parts.append("".join(out.get("data", {}).get("text/plain", "")))
    return plain_exponent("\n".join(parts))


def quotes(nb_path):
    """(figure, cell id, markdown cell index) for every marked figure of a notebook."""
    cells = json.loads(nb_path.read_text())["cells"]
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "markdown":
            for figure, cell_id in MARKER.findall("".join(cell["source"])):
                yield plain_exponent(figure.lstrip("*_`(~≈$").rstrip(".,;:")), cell_id, i


def test_figures_are_marked_at_all():
    found = [q for nb in NOTEBOOKS for q in quotes(nb)]
    assert len(found) >= 5, "the notebooks' quoted figures lost their <!--out:CELL_ID--> markers"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_each_quoted_figure_is_in_the_output_it_quotes(nb_path):
    cells = {c.get("id"): c for c in json.loads(nb_path.read_text())["cells"]}
    wrong = []
    for figure, cell_id, md_index in quotes(nb_path):
        if cell_id not in cells or cells[cell_id]["cell_type"] != "code":
            wrong.append(f"markdown cell {md_index}: no code cell with id {cell_id!r}")
        elif not re.search(rf"(?<![\d.]){re.escape(figure)}(?![\d])", cell_text(cells[cell_id])):
            wrong.append(f"markdown cell {md_index} quotes {figure!r}, not in the output of cell {cell_id!r}")
    assert not wrong, "\n".join(wrong)
