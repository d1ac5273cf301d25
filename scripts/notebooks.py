"""Keep the notebooks executed, clean and alike.

    python scripts/notebooks.py sync                 # put scripts/setup_cell.py first in every notebook
    python scripts/notebooks.py run [NB ...]         # execute top to bottom, then clean and save
    python scripts/notebooks.py check                # report hygiene problems (what the tests assert)

`run` executes each notebook in its own folder with the current environment
(so GPT_PRESET=smoke, cpu or gpu picks the preset) and saves it only if no
cell raised. Cleaning drops what a reader should not see: stderr streams
(progress-bar residue, warnings), widget views and state, Colab metadata.
The setup cell is the one exception: `sync` gives it exactly SETUP_CELL_METADATA,
so JupyterLab shows it collapsed and Colab shows it as a form under its #@title.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SETUP_CELL = (ROOT / "scripts" / "setup_cell.py").read_text().strip()
# the setup cell's metadata, and only the setup cell's: collapsed in JupyterLab, a form in Colab
SETUP_CELL_METADATA = {"cellView": "form", "jupyter": {"source_hidden": True}}
# notebooks that train for real on a GPU open in Colab with a GPU runtime (the T4 of Colab's free tier)
GPU_NOTEBOOKS = ("05_training", "08_performance")
COLAB_GPU_METADATA = {"accelerator": "GPU", "colab": {"gpuType": "T4"}}
# nbval compares the outputs of the cells tagged so; the reader never sees a marker in the code
CHECK_OUTPUT_TAG = "nbval-check-output"
CI_MARKER = re.compile(r"^\s*#\s*NBVAL_[A-Z_]+", re.M)
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# a path on the machine that executed the notebook: /home/..., /tmp/..., C:\Users\...
ABSOLUTE_PATH = re.compile(r"(?<![\w.])(/(home|Users|tmp|root|work|content|var|private)/|[A-Z]:\\\\)")


def notebook_paths(names=()):
    if names:
        return [Path(n).resolve() for n in names]
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")) + sorted(NOTEBOOKS.glob("solutions/[0-9][0-9]_*.ipynb"))


def setup_cell_index(nb) -> int | None:
    return next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), None)


def sync(nb) -> bool:
    """Make the first code cell scripts/setup_cell.py, collapsed; touch nothing else."""
    i = setup_cell_index(nb)
    if i is None:
        raise SystemExit("a notebook needs at least one code cell: the setup cell")
    cell = nb.cells[i]
    changed = cell.source != SETUP_CELL or cell.metadata != SETUP_CELL_METADATA
    cell.source, cell.metadata = SETUP_CELL, nbformat.from_dict(copy.deepcopy(SETUP_CELL_METADATA))
    return changed


def hides_code(cell) -> bool:
    """Whether a cell carries the setup cell's keys: Colab's form view or JupyterLab's collapsed source."""
    return "cellView" in cell.metadata or "source_hidden" in cell.metadata.get("jupyter", {})


def gpu_metadata(name: str) -> dict:
    """The notebook-level Colab metadata a notebook should carry: a GPU runtime for GPU_NOTEBOOKS."""
    return COLAB_GPU_METADATA if Path(name).stem in GPU_NOTEBOOKS else {}


def clean(nb, name: str = ""):
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("colab", None)
    nb.metadata.pop("accelerator", None)
    nb.metadata.update(copy.deepcopy(gpu_metadata(name)))
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    setup = setup_cell_index(nb)
    for i, cell in enumerate(nb.cells):
        cell.metadata.pop("colab", None)
        cell.metadata.pop("outputId", None)
        cell.metadata.pop("execution", None)
        if i != setup:
            cell.metadata.pop("cellView", None)  # Colab's form view belongs to the setup cell alone
        if cell.cell_type != "code":
            continue
        if cell.source.startswith("# NBVAL_CHECK_OUTPUT\n"):  # the old comment marker becomes a tag
            cell.source = cell.source.split("\n", 1)[1]
            cell.metadata["tags"] = sorted({*cell.metadata.get("tags", []), CHECK_OUTPUT_TAG})
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
    elif nb.cells[i].metadata != SETUP_CELL_METADATA:
        found.append(f"{name}: the setup cell's metadata is not exactly {SETUP_CELL_METADATA} "
                     "(run `python scripts/notebooks.py sync`)")
    colab = {k: nb.metadata[k] for k in ("colab", "accelerator") if k in nb.metadata}
    if "widgets" in nb.metadata or colab != gpu_metadata(name):
        found.append(f"{name}: widget metadata, or Colab metadata other than {gpu_metadata(name) or 'none'}")
    for n, cell in enumerate(nb.cells):
        if n != i and ("colab" in cell.metadata or hides_code(cell)):
            found.append(f"{name}: cell {n} has Colab metadata or hidden code; only the setup cell is collapsed")
        if cell.cell_type != "code":
            continue
        if CI_MARKER.search(cell.source):
            found.append(f"{name}: cell {n} shows a CI marker in its code; tag the cell ({CHECK_OUTPUT_TAG}) instead")
        if CHECK_OUTPUT_TAG in cell.metadata.get("tags", []) and not cell.outputs:
            found.append(f"{name}: cell {n} is tagged {CHECK_OUTPUT_TAG} but has no output to compare")
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
    clean(nb, path.name)
    nbformat.write(nb, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["sync", "run", "check"])
    parser.add_argument("notebooks", nargs="*", help="notebook files (default: every notebooks/NN_*.ipynb)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds a cell may run")
    args = parser.parse_args(argv)
    paths = notebook_paths(args.notebooks)
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:  # before any notebook runs: a run can take many minutes
        parser.error(f"no such notebook: {', '.join(missing)} (give paths, e.g. notebooks/01_attention.ipynb)")
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
