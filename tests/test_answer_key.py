"""gpt_helpers.py as the course's answer key: one section per notebook, in notebook order,
nothing used before the section that defines it, the notebooks' drafts under the helper's
names, short functions, and no file reaching into another's private names."""

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / "gpt_helpers.py"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BANNER = re.compile(r"^# (\d\d) · ", re.M)

# drafts whose final version is PyTorch's own module or function, not a helper name
FINAL_IN_TORCH = {
    "attention": "F.scaled_dot_product_attention", "Head": "CausalSelfAttention's heads",
    "layer_norm": "nn.LayerNorm", "LayerNorm": "nn.LayerNorm", "gelu_tanh": "nn.GELU(approximate='tanh')",
    "gelu_exact": "nn.GELU()", "softmax": "F.softmax", "init_stack": "GPT._init_weights",
    "sample": "generate (notebook 06)", "generate_greedy": "generate(temperature=0.0)",
    "generate_cached": "generate", "head_loss_chunked": "fused_head_loss",
}


def helper_sections():
    """{top-level name: section number} (0 = utilities, the last notebook's + 1 = the whole run), from the banners."""
    src = HELPER.read_text()
    starts = [(src[: m.start()].count("\n") + 1, int(m.group(1))) for m in BANNER.finditer(src)]
    run_start = src[: src.index("# The whole run")].count("\n") + 1
    starts.append((run_start, max(n for _, n in starts) + 1))

    def section(line):
        return max([n for start, n in starts if start <= line], default=0)

    tree = ast.parse(src)
    names = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = (section(node.lineno), node)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = (section(node.lineno), node)
    return names, section, tree


def test_sections_are_the_notebooks_in_order():
    numbers = [int(m.group(1)) for m in BANNER.finditer(HELPER.read_text())]
    titles = [nb.name[:2] for nb in NOTEBOOKS]
    assert numbers == list(range(1, len(NOTEBOOKS) + 1)), f"section banners out of order: {numbers}"
    assert titles == [f"{n:02d}" for n in numbers], f"one section per notebook: {titles} vs {numbers}"


def test_nothing_uses_a_name_from_a_later_section():
    names, section, tree = helper_sections()
    late = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign)):
            continue
        here = section(node.lineno)
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id in names and names[sub.id][0] > here:
                late.append(f"line {sub.lineno}: section {here} uses {sub.id} from section {names[sub.id][0]}")
    assert not late, "\n".join(late)


def test_notebook_05_pieces_live_in_section_05_and_train_calls_train_step():
    names, _, _ = helper_sections()
    for name in ("param_groups", "lr_schedule", "train_step", "estimate_loss", "save_checkpoint",
                 "load_checkpoint"):
        assert names[name][0] == 5, f"{name} is in section {names[name][0]}, not 05"
    calls = {n.func.id for n in ast.walk(names["train"][1]) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "train_step" in calls
    assert "configure_optimizer" in calls and "estimate_loss" in calls


def code_cells(nb_path):
    return ["".join(c["source"]) for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code"]


def test_every_draft_has_its_final_version_in_the_helper():
    names, _, _ = helper_sections()
    missing = []
    for nb in NOTEBOOKS:
        for src in code_cells(nb):
            for draft in re.findall(r"^(?:def|class) (\w+?)_v\d+\b", src, re.M):
                if draft not in names and draft not in FINAL_IN_TORCH:
                    missing.append(f"{nb.name}: {draft}_vN has no gpt_helpers.{draft}")
    assert not missing, "\n".join(missing)


def python_files():
    return [p for p in ROOT.rglob("*.py") if ".cache" not in p.parts and "solutions" not in p.parts]


def function_lengths(path):
    tree = ast.parse(path.read_text())
    return {f"{path.name}:{n.name}": n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and not path.name.startswith("test_")}


def test_functions_are_short():
    lengths = {}
    for path in [HELPER, ROOT / "train.py", *sorted((ROOT / "benchmarks").glob("*.py"))]:
        lengths |= function_lengths(path)
    assert lengths["gpt_helpers.py:train"] <= 60
    long = {k: v for k, v in lengths.items() if v > 50 and k != "gpt_helpers.py:train"}
    assert not long, f"functions over 50 lines: {long}"


PRIVATE_IMPORT = re.compile(r"from gpt_helpers import[^\n]*\b_\w|from gpt_helpers import \([^)]*\b_\w|gpt_helpers\._\w|gh\._\w")
BENCHMARK_IMPORT = re.compile(r"^\s*(from|import) benchmarks\b", re.M)


def test_no_private_names_cross_files_and_nothing_imports_the_benchmarks():
    sources = {p.relative_to(ROOT): p.read_text() for p in python_files() if p.name != "test_answer_key.py"}
    sources |= {nb.relative_to(ROOT): "\n".join(code_cells(nb)) for nb in NOTEBOOKS}
    private = [str(p) for p, s in sources.items() if PRIVATE_IMPORT.search(s)]
    assert not private, f"private gpt_helpers names used in: {private}"
    users = [str(p) for p, s in sources.items()
             if BENCHMARK_IMPORT.search(s) and p.parts[0] != "benchmarks"]
    assert not users, f"these import benchmarks/: {users}"


@pytest.mark.parametrize("pattern", [PRIVATE_IMPORT, BENCHMARK_IMPORT])
def test_the_import_checks_catch_what_they_look_for(pattern):
    bad = {PRIVATE_IMPORT: "from gpt_helpers import GPT, _loss\n", BENCHMARK_IMPORT: "from benchmarks.train_speed import x\n"}
    assert pattern.search(bad[pattern])
