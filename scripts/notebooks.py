"""Keep the notebooks executed, clean and alike.

    python scripts/notebooks.py sync                 # put scripts/setup_cell.py first in every notebook
    python scripts/notebooks.py run [NB ...]         # execute top to bottom, then clean and save
    python scripts/notebooks.py check                # report hygiene problems (what the tests assert)

`run` executes each notebook in its own folder with the current environment
(so GPT_PRESET=smoke, cpu or gpu picks the preset) and saves it only if no
cell raised. Cleaning drops what a reader should not see: stderr streams
(progress-bar residue, warnings), widget views and state, Colab metadata.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SETUP_CELL = (ROOT / "scripts" / "setup_cell.py").read_text().strip()
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# a path on the machine that executed the notebook: /home/..., /tmp/..., C:\Users\...
ABSOLUTE_PATH = re.compile(r"(?<![\w.])(/(home|Users|tmp|root|work|content|var|private)/|[A-Z]:\\\\)")


def notebook_paths(names=()):
    if names:
        return [Path(n).resolve() for n in names]
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def setup_cell_index(nb) -> int | None:
    return next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), None)


def sync(nb) -> bool:
    i = setup_cell_index(nb)
    if i is None:
        raise SystemExit("a notebook needs at least one code cell: the setup cell")
    changed = nb.cells[i].source != SETUP_CELL
    nb.cells[i].source = SETUP_CELL
    return changed


def clean(nb):
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("colab", None)
    nb.metadata.pop("accelerator", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    for cell in nb.cells:
        cell.metadata.pop("colab", None)
        cell.metadata.pop("outputId", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.outputs:
            if out.output_type == "stream" and out.name == "stderr":
                continue
            if out.output_type in ("display_data", "execute_result") and WIDGET_MIME in out.get("data", {}):
                continue
            kept.append(out)
        cell.outputs = kept


def problems(nb, name: str) -> list[str]:
    """What the hygiene test rejects in a committed notebook."""
    found = []
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    if any(n is None for n in counts):
        found.append(f"{name}: a code cell was not executed")
    elif counts != list(range(1, len(counts) + 1)):
        found.append(f"{name}: cells were not executed once, in order, from a fresh kernel ({counts})")
    i = setup_cell_index(nb)
    if i is None or nb.cells[i].source.strip() != SETUP_CELL:
        found.append(f"{name}: the first code cell is not scripts/setup_cell.py (run `python scripts/notebooks.py sync`)")
    if "colab" in nb.metadata or "widgets" in nb.metadata:
        found.append(f"{name}: Colab or widget metadata")
    for n, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for out in cell.outputs:
            if out.output_type == "error":
                found.append(f"{name}: cell {n} has an error output ({out.get('ename')})")
            if out.output_type == "stream" and out.name == "stderr":
                found.append(f"{name}: cell {n} has stderr output")
            text = out.get("text", "") + "".join(
                v for k, v in out.get("data", {}).items() if k.startswith("text/") and isinstance(v, str))
            if ABSOLUTE_PATH.search(text):
                found.append(f"{name}: cell {n} prints an absolute path")
    return found


def run(path: Path, timeout: int):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    sync(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    clean(nb)
    nbformat.write(nb, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["sync", "run", "check"])
    parser.add_argument("notebooks", nargs="*", help="notebook files (default: every notebooks/NN_*.ipynb)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds a cell may run")
    args = parser.parse_args(argv)
    paths = notebook_paths(args.notebooks)
    if args.command == "sync":
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            if sync(nb):
                nbformat.write(nb, path)
                print(f"synced {path.name}")
    elif args.command == "run":
        for path in paths:
            print(f"running {path.name} ...", flush=True)
            run(path, args.timeout)
    else:
        found = [p for path in paths for p in problems(nbformat.read(path, as_version=4), path.name)]
        print("\n".join(found) or f"{len(paths)} notebooks clean")
        return 1 if found else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
