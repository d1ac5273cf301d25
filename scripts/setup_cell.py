# Setup: the same cell opens every notebook. Locally and in CI it finds gpt_helpers.py
# in the course folder; in Colab it first installs what is missing and fetches the course.
import importlib.util, os, subprocess, sys
from pathlib import Path

REPO_URL = "https://github.com/gpt2-from-scratch/gpt2-from-scratch"  # the one place it is written


def find_course_root():
    return next((p for p in [Path.cwd(), *Path.cwd().parents] if (p / "gpt_helpers.py").is_file()), None)


if find_course_root() is None and "google.colab" in sys.modules:
    needed = ["tiktoken", "transformers", "torchsummary", "matplotlib", "tqdm"]  # never torch: Colab's matches its GPU
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
    course = Path(REPO_URL.rstrip("/").split("/")[-1])
    if not course.exists():
        subprocess.run(["git", "clone", "-q", "--depth", "1", REPO_URL, str(course)], check=True)
    os.chdir(course / "notebooks")
ROOT = find_course_root()
if ROOT is None:
    raise FileNotFoundError("gpt_helpers.py not found: open this notebook from the course's notebooks/ folder")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
