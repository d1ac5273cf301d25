"""Every committed notebook is executed, clean, numbered, opens with the same setup cell,
and is linked from the README; the course's GitHub address is written in one place only.

The checks come from scripts/notebooks.py (`python scripts/notebooks.py check` prints the same
problems), so a failure here is fixed with `python scripts/notebooks.py run NB`.
"""

import ast
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
SETUP_CELL_FILE = ROOT / "scripts" / "setup_cell.py"
README = ROOT / "README.md"
_PART = r"([^/\s)\"']+)"  # one path segment of a link
COLAB_LINK = re.compile(rf"https://colab\.research\.google\.com/github/{_PART}/{_PART}/blob/{_PART}/([^\s)\"'>]+)")


from scripts import notebooks as notebooks_script  # noqa: E402  (scripts/: a namespace package)


def _repo_url() -> str:
    """REPO_URL as assigned in scripts/setup_cell.py (read, never executed: the cell clones in Colab)."""
    tree = ast.parse(SETUP_CELL_FILE.read_text())
    values = [node.value.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == "REPO_URL" for t in node.targets)
              and isinstance(node.value, ast.Constant)]
    assert len(values) == 1, f"scripts/setup_cell.py should assign REPO_URL once, found {len(values)}"
    return values[0]


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request):
    return request.param, nbformat.read(request.param, as_version=4)


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks/NN_*.ipynb in {NOTEBOOK_DIR.name}/"


def test_notebooks_are_numbered_from_01_without_gaps():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(1, len(NOTEBOOKS) + 1)), [p.name for p in NOTEBOOKS]


def test_no_stray_notebooks():
    # a notebook outside the NN_name pattern is never tested and never linked
    stray = [p.name for p in NOTEBOOK_DIR.glob("*.ipynb") if p not in NOTEBOOKS]
    assert not stray, f"rename to NN_name.ipynb or remove: {stray}"


def test_notebook_is_clean(notebook):
    path, nb = notebook
    found = notebooks_script.problems(nb, path.name)
    assert not found, "\n".join(found) + "\n(fix: python scripts/notebooks.py run " + path.name + ")"


def test_first_code_cell_is_the_setup_cell(notebook):
    path, nb = notebook
    cells = _code_cells(nb)
    assert cells, f"{path.name} has no code cell"
    assert cells[0].source.strip() == SETUP_CELL_FILE.read_text().strip(), (
        f"{path.name}: run `python scripts/notebooks.py sync`")
    assert not any(o.output_type == "error" for o in cells[0].outputs)


def test_setup_cell_is_collapsed(notebook):
    # JupyterLab shows it folded, Colab as a form under its #@title line
    path, nb = notebook
    assert _code_cells(nb)[0].metadata == notebooks_script.SETUP_CELL_METADATA, (
        f"{path.name}: run `python scripts/notebooks.py sync`")


def test_only_the_setup_cell_is_collapsed():
    def notebook():
        cells = [nbformat.v4.new_markdown_cell("# A notebook"),
                 nbformat.v4.new_code_cell(SETUP_CELL_FILE.read_text().strip(), execution_count=1),
                 nbformat.v4.new_code_cell("x = 1", execution_count=2)]
        nb = nbformat.v4.new_notebook(cells=cells)
        assert notebooks_script.sync(nb) and not notebooks_script.sync(nb)  # a second sync changes nothing
        return nb

    assert notebooks_script.problems(notebook(), "nb") == []
    flagged = {"cell 2 in form view": (2, {"cellView": "form"}),
               "cell 2 collapsed": (2, {"jupyter": {"source_hidden": True}}),
               "cell 2 with Colab metadata": (2, {"colab": {"base_uri": "https://localhost:8080/"}}),
               "setup cell expanded": (1, {"cellView": "form"}),
               "setup cell with more": (1, {**notebooks_script.SETUP_CELL_METADATA, "tags": ["nbval-skip"]})}
    for what, (index, metadata) in flagged.items():
        nb = notebook()
        nb.cells[index].metadata = metadata
        assert notebooks_script.problems(nb, "nb"), f"{what} was not reported"
    nb = notebook()
    nb.cells[2].metadata = {"cellView": "form"}
    notebooks_script.clean(nb)
    assert notebooks_script.problems(nb, "nb") == []  # clean drops Colab's form view from every cell but the setup cell


def test_repo_url_is_written_only_in_the_setup_cell(notebook):
    path, nb = notebook
    url = _repo_url()
    cells = _code_cells(nb)
    elsewhere = [i for i, c in enumerate(nb.cells) if url in c.source and c is not cells[0]]
    assert not elsewhere, f"{path.name}: cells {elsewhere} repeat REPO_URL; use the setup cell's REPO_URL"


def test_repo_url_has_one_source_of_truth():
    url = _repo_url()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url
    files = [*sorted((ROOT / "scripts").iterdir()), ROOT / "gpt_helpers.py", ROOT / "conftest.py", ROOT / ".ci" / "run"]
    counts = {p.name: p.read_text().count(url) for p in files if p.is_file() and p.suffix in (".py", "", ".sh")}
    assert counts.pop(SETUP_CELL_FILE.name) == 1
    assert not any(counts.values()), f"REPO_URL repeated outside scripts/setup_cell.py: {counts}"


def test_readme_links_every_notebook(notebook):
    path, _ = notebook
    assert README.exists(), "README.md is missing"
    assert path.name in README.read_text(), f"README.md does not mention {path.name}"


def _colab_links(text: str):
    return [m.groups() for m in COLAB_LINK.finditer(text)]


def _check_colab_links(source_name: str, text: str):
    owner_repo = tuple(_repo_url().split("/")[-2:])
    for owner, repo, _branch, file in _colab_links(text):
        assert (owner, repo) == owner_repo, f"{source_name}: Colab link to {owner}/{repo}, not {'/'.join(owner_repo)}"
        assert (ROOT / file).is_file(), f"{source_name}: Colab link to {file}, which does not exist"


def test_readme_colab_links_point_at_the_course_repo():
    assert README.exists(), "README.md is missing"
    _check_colab_links("README.md", README.read_text())


def test_readme_mentions_only_existing_notebooks():
    assert README.exists(), "README.md is missing"
    named = set(re.findall(r"\b\d\d_[\w-]+\.ipynb", README.read_text()))
    missing = sorted(n for n in named if not (NOTEBOOK_DIR / n).is_file())
    assert not missing, f"README.md names notebooks that do not exist: {missing}"


def test_notebook_colab_badge_points_at_the_course_repo(notebook):
    path, nb = notebook
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert len(_colab_links(text)) == 1, f"{path.name}: needs one Open-in-Colab badge under its title"
    _check_colab_links(path.name, text)
    for *_, file in _colab_links(text):
        assert file == f"notebooks/{path.name}", f"{path.name}: its Colab badge opens {file}"


def test_colab_link_pattern_reads_links():
    # the link checks above pass vacuously if the pattern stops matching: keep it honest
    link = "[![Open](b.svg)](https://colab.research.google.com/github/me/course/blob/main/notebooks/01_x.ipynb)"
    assert _colab_links(link) == [("me", "course", "main", "notebooks/01_x.ipynb")]


SOLUTIONS = sorted((NOTEBOOK_DIR / "solutions").glob("[0-9][0-9]_*_solutions.ipynb"))


def test_every_lesson_has_a_solutions_notebook():
    lessons = {p.stem for p in NOTEBOOKS}
    answered = {p.stem.removesuffix("_solutions") for p in SOLUTIONS}
    assert lessons == answered, f"lessons without solutions: {sorted(lessons - answered)}; strays: {sorted(answered - lessons)}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_solutions_notebook_is_clean_and_links_its_lesson(path):
    nb = nbformat.read(path, as_version=4)
    found = notebooks_script.problems(nb, path.name)
    assert not found, "\n".join(found) + "\n(fix: python scripts/notebooks.py run notebooks/solutions/" + path.name + ")"
    lesson = path.name.replace("_solutions", "")
    first_markdown = next(c.source for c in nb.cells if c.cell_type == "markdown")
    assert f"../{lesson}" in first_markdown, f"{path.name} does not link back to ../{lesson}"
