"""The utilities section of gpt_helpers (get_device, check_device, set_seed, compare) and the test run's preset."""

import os
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt_helpers import (
    check_device,
    compare,
    first_line,
    get_device,
    get_preset,
    is_number,
    is_positive_int,
    preset_name,
    rng_state,
    set_rng_state,
    set_seed,
    unwrap,
)

ROOT = Path(__file__).resolve().parent.parent


def test_get_device_is_cpu_without_an_accelerator():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    assert get_device() == "cpu"
    torch.zeros(1, device=get_device())  # a device torch accepts


def test_set_seed_makes_torch_and_python_repeatable():
    set_seed(123)
    a, ra = torch.randn(5), random.random()
    set_seed(123)
    b, rb = torch.randn(5), random.random()
    set_seed(124)
    c = torch.randn(5)
    assert torch.equal(a, b) and ra == rb
    assert not torch.equal(a, c)


def test_set_seed_makes_model_init_repeatable(tiny_config):
    from gpt_helpers import GPT

    set_seed(7)
    a = GPT(tiny_config).state_dict()
    set_seed(7)
    b = GPT(tiny_config).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compare_prints_ok_and_returns_the_difference(capsys):
    a = torch.tensor([1.0, 2.0], dtype=torch.float64)
    diff = compare("logits", a, a + torch.tensor([0.0, 1e-7], dtype=torch.float64), atol=1e-6)
    out = capsys.readouterr().out
    assert out.startswith("OK") and "logits" in out and out.count("\n") == 1
    assert diff == pytest.approx(1e-7, rel=1e-2)


def test_compare_raises_when_values_differ(capsys):
    with pytest.raises(AssertionError, match=r"attention: max \|diff\| 1\.000e-03 exceeds atol 1e-05"):
        compare("attention", torch.zeros(3), torch.tensor([0.0, 1e-3, 0.0]))
    assert capsys.readouterr().out.startswith("FAIL attention")


def test_compare_respects_rtol():
    compare("big", torch.tensor([1000.0]), torch.tensor([1000.5]), atol=0.0, rtol=1e-3)
    with pytest.raises(AssertionError):
        compare("big", torch.tensor([1000.0]), torch.tensor([1000.5]), atol=0.0, rtol=1e-4)


def test_compare_raises_when_shapes_differ():
    with pytest.raises(AssertionError, match=r"x: shapes differ: \(2, 3\) vs \(3, 2\)"):
        compare("x", torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(AssertionError, match="shapes differ"):  # no silent broadcasting either
        compare("x", torch.zeros(1, 3), torch.zeros(3))


def test_compare_rejects_nan():
    with pytest.raises(AssertionError):
        compare("loss", torch.tensor([float("nan")]), torch.tensor([1.0]))
    with pytest.raises(AssertionError):
        compare("loss", torch.tensor([float("nan")]), torch.tensor([float("nan")]))


def test_compare_accepts_numbers_and_lists(capsys):
    compare("count", 3, 3)
    compare("ids", [1, 2, 3], torch.tensor([1, 2, 3]))
    assert capsys.readouterr().out.count("OK") == 2


# ----------------------------------------------------------------------------- small public helpers


def test_is_positive_int_and_is_number_refuse_bools_and_strings():
    assert [is_positive_int(v) for v in (1, 7, 0, -3, True, 2.0, "3", None)] == [True, True] + [False] * 6
    assert [is_number(v) for v in (0, -1, 1.5, float("nan"), True, "1", None)] == [True] * 4 + [False] * 3


def test_first_line_of_an_exception():
    assert first_line(OSError("Failed to resolve host\nretrying...\n")) == "Failed to resolve host"
    assert first_line(ValueError("\n  one line  ")) == "one line"
    assert first_line(RuntimeError()) == ""


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.jit")  # importing torch.compile
def test_unwrap_gives_the_module_under_torch_compile(tiny_config):
    from gpt_helpers import GPT

    model = GPT(tiny_config)
    assert unwrap(model) is model
    compiled = torch.compile(model)  # lazy: nothing is compiled until it is called
    assert compiled is not model and unwrap(compiled) is model
    assert list(unwrap(compiled).state_dict()) == list(model.state_dict())  # no _orig_mod. prefix


def test_rng_state_round_trip_repeats_torch_and_python_draws():
    set_seed(5)
    state = rng_state()
    a, ra = torch.rand(3), random.random()
    torch.rand(10), random.random()  # move on
    set_rng_state(state)
    assert torch.equal(torch.rand(3), a) and random.random() == ra


# ----------------------------------------------------------------------------- the preset the tests use


def test_tests_run_the_smoke_preset():
    assert os.environ["GPT_PRESET"] == "smoke"
    assert preset_name() == "smoke"
    smoke, cpu, gpu = (get_preset(n).model for n in ("smoke", "cpu", "gpu"))
    assert get_preset().model == smoke
    size = lambda c: c.n_layer * c.n_embd**2  # noqa: E731 -- the block weights grow like this
    assert size(smoke) < size(cpu) < size(gpu)


def test_conftest_forces_smoke_even_when_the_shell_sets_another_preset():
    env = dict(os.environ, GPT_PRESET="gpu")
    code = "import os, conftest; print(os.environ['GPT_PRESET'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "smoke"


# flags that change what pytest prints, not which tests run or how
OUTPUT_FLAGS = re.compile(r"-q+|-v+|-r\w*|--tb=\w+|--durations=\d+|--color=\w+")


def _pytest_commands(text: str) -> list[str]:
    """The pytest command lines in a shell script or README, with `python3` written `python`
    and output-only flags dropped."""
    found = re.findall(r"^\s*(?:\$\s*)?(python3? -m pytest[^\n`#]*)", text, flags=re.M)
    return [" ".join(w for w in shlex.split(c.replace("python3 ", "python ", 1)) if not OUTPUT_FLAGS.fullmatch(w))
            for c in found]


def test_ci_runs_the_readme_test_command_with_the_smoke_preset():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = _pytest_commands(ci)
    assert len(commands) == 1, f".ci/run should run pytest once, found {commands}"
    # the preset comes from conftest.py alone: neither CI nor pytest.ini chooses another one
    for name, text in ((".ci/run", ci), ("pytest.ini", (ROOT / "pytest.ini").read_text())):
        for value in re.findall(r"GPT_PRESET\s*=\s*(\S+)", text):
            assert value.strip("\"'") == "smoke", f"{name} sets GPT_PRESET={value}"
    assert "-k" not in commands[0].split() and "--deselect" not in commands[0], "CI must run every test"
    readme = ROOT / "README.md"
    if readme.exists():
        assert commands[0] in _pytest_commands(readme.read_text()), (
            f"README.md should show the command CI runs: {commands[0]}")


def test_check_device_accepts_what_exists_and_names_what_does_not():
    assert check_device("cpu") == "cpu"
    assert check_device(None) == get_device()
    with pytest.raises(ValueError, match=r"'tpu' is not a device: use cpu, cuda, cuda:N or mps"):
        check_device("tpu")
    with pytest.raises(ValueError, match=r"'meta': use cpu, cuda, cuda:N or mps"):
        check_device("meta")  # a real torch device, but nothing trains there
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here; use cpu"):
            check_device("cuda:0")
