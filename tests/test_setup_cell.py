"""The setup cell that opens every notebook, run the way Colab runs it.

Each test runs scripts/setup_cell.py in a fresh Python from a temporary folder with no course
above it (Colab's /content), with a stand-in `google.colab` on PYTHONPATH and REPO_URL pointing
at a local bare repository, a missing one, or a local server that misbehaves. A stand-in `pip`
on the same path records what the cell would install, so nothing is downloaded.
"""

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP_CELL = (ROOT / "scripts" / "setup_cell.py").read_text()
# printed after the cell has run, for the test to read
REPORT = """
import json as _json
print("REPORT " + _json.dumps({"root": str(ROOT), "cwd": os.getcwd(), "sys_path_0": sys.path[0],
                                "colab_imported": "google.colab" in sys.modules,
                                "version": __import__("gpt_helpers").VERSION}))
"""


def git(*args, cwd=None):
    subprocess.run(["git", "-c", "user.name=Course Test", "-c", "user.email=test@example.com", *args],
                   cwd=cwd, check=True, capture_output=True, env=_git_env())


def _git_env():
    # no user or system git config, no inherited GIT_* variables: the cell sets what it needs itself
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") and k != "PYTHONPATH"}
    return {**env, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def with_setting(source: str, name: str, value: str) -> str:
    """The cell's source with `name = ...` replaced, as a reader would edit it."""
    new, count = re.subn(rf"^{name} = .*$", f"{name} = {value}", source, flags=re.M)
    assert count == 1, f"scripts/setup_cell.py should assign {name} once"
    return new


def run_cell(workdir: Path, url: str, stand_in: Path, *, before: str = "", after: str = REPORT, timeout_s: int = 120):
    source = with_setting(with_setting(SETUP_CELL, "REPO_URL", json.dumps(url)), "CLONE_TIMEOUT_S", str(timeout_s))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", before + source + after], cwd=workdir, capture_output=True,
                          text=True, timeout=90, env={**_git_env(), "PYTHONPATH": str(stand_in)})
    done.seconds = time.monotonic() - start
    done.report = next((json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("REPORT ")), None)
    return done


@pytest.fixture
def stand_in(tmp_path):
    """A folder for PYTHONPATH holding a stand-in google.colab and a stand-in pip that records its arguments."""
    site = tmp_path / "site"
    for package in ("google", "google/colab", "pip"):
        (site / package).mkdir(parents=True)
        (site / package / "__init__.py").write_text("")
    (site / "pip" / "__main__.py").write_text(
        f"import json, sys\nopen({json.dumps(str(tmp_path / 'pip.log'))}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    return site


@pytest.fixture
def content(tmp_path):
    """Colab's working folder: empty, with no course above it."""
    folder = tmp_path / "content"
    folder.mkdir()
    assert not any((p / "gpt_helpers.py").exists() for p in [folder, *folder.parents])
    return folder


@pytest.fixture
def course(tmp_path):
    """A tiny course in a working repository, published to a local bare repository."""
    work = tmp_path / "work"
    (work / "notebooks").mkdir(parents=True)
    (work / "gpt_helpers.py").write_text("VERSION = 1\n")
    (work / "notebooks" / "01_intro.ipynb").write_text("{}\n")
    git("init", "-q", "-b", "main", str(work))
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "course", cwd=work)
    bare = tmp_path / "remote" / "course.git"
    git("clone", "-q", "--bare", str(work), str(bare))

    class Course:
        url = bare.as_uri()
        remote = bare

        @staticmethod
        def publish(version):
            (work / "gpt_helpers.py").write_text(f"VERSION = {version}\n")
            git("commit", "-q", "-am", f"version {version}", cwd=work)
            git("push", "-q", str(bare), "main", cwd=work)

    return Course


def assert_course_message(done, url):
    assert done.returncode != 0 and done.report is None, done.stdout + done.stderr
    assert f"RuntimeError: could not clone REPO_URL={url}: " in done.stderr, done.stderr
    assert "set REPO_URL in this cell to where the course is published" in done.stderr, done.stderr
    assert "Traceback" in done.stderr and "CalledProcessError" not in done.stderr


def test_cell_is_a_form_with_a_one_line_title():
    first = SETUP_CELL.splitlines()[0]
    assert re.fullmatch(r"#@title \S.{10,}", first), first  # Colab's form view; the title is what readers see


@pytest.mark.parametrize("imported_first", [False, True], ids=["colab-importable-not-imported", "colab-imported"])
def test_fresh_clone_is_imported(course, content, stand_in, tmp_path, imported_first):
    done = run_cell(content, course.url, stand_in, before="import google.colab\n" if imported_first else "")
    assert done.returncode == 0, done.stderr
    clone = content / "course"
    assert Path(done.report["root"]) == clone.resolve() == Path(done.report["sys_path_0"])
    assert Path(done.report["cwd"]) == (clone / "notebooks").resolve()
    assert done.report["version"] == 1
    # the cell only looks for google.colab: it never imports it
    assert done.report["colab_imported"] is imported_first
    assert sorted(p.name for p in content.iterdir()) == ["course"]  # nothing half-done left beside it
    assert not (tmp_path / "pip.log").exists() or "torch" not in (tmp_path / "pip.log").read_text()


def pip_calls(tmp_path) -> list:
    """The stand-in pip's calls, one list of arguments each: [] when the cell never ran pip."""
    log = tmp_path / "pip.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_only_missing_packages_are_installed_never_torch(course, content, stand_in, tmp_path):
    # this kernel "lacks" transformers, torchsummary and tqdm (and has torch: Colab's build must stay)
    hide = ("import importlib.util\n_find_spec = importlib.util.find_spec\nimportlib.util.find_spec = "
            "lambda name, *a: None if name in ('tqdm', 'torchsummary', 'transformers') else _find_spec(name, *a)\n")
    done = run_cell(content, course.url, stand_in, before=hide)
    assert done.returncode == 0, done.stderr
    assert pip_calls(tmp_path) == [["install", "-q", "transformers>=5.0", "torchsummary", "tqdm"]]  # never a 4.x transformers


def test_transformers_older_than_5_is_upgraded(course, content, stand_in, tmp_path):
    # an older Colab image: every package importable, but transformers 4.x
    old = ("import importlib.metadata\n_version = importlib.metadata.version\n"
           "importlib.metadata.version = lambda name: '4.57.1' if name == 'transformers' else _version(name)\n")
    done = run_cell(content, course.url, stand_in, before=old)
    assert done.returncode == 0, done.stderr
    assert pip_calls(tmp_path) == [["install", "-q", "transformers>=5.0"]]


def test_transformers_without_package_metadata_is_kept(course, content, stand_in, tmp_path):
    # importable, but no version to read (a source checkout on sys.path): the cell goes on without pip
    bare = ("import importlib.metadata\n_version = importlib.metadata.version\n"
            "def version(name):\n"
            "    if name == 'transformers':\n"
            "        raise importlib.metadata.PackageNotFoundError(name)\n"
            "    return _version(name)\n"
            "importlib.metadata.version = version\n")
    done = run_cell(content, course.url, stand_in, before=bare)
    assert done.returncode == 0, done.stderr
    assert pip_calls(tmp_path) == []


def test_partial_clone_is_replaced(course, content, stand_in):
    # what an interrupted cell leaves: a half-done clone beside the folder the course goes to
    (content / "course.partial").mkdir()
    (content / "course.partial" / "HEAD").write_text("")
    done = run_cell(content, course.url, stand_in)
    assert done.returncode == 0, done.stderr
    assert done.report["version"] == 1
    assert sorted(p.name for p in content.iterdir()) == ["course"]


def test_a_folder_that_is_not_the_course_is_kept(course, content, stand_in):
    # the course's name, but no gpt_helpers.py: an upload under way, or the user's own folder; never deleted
    (content / "course" / "notebooks").mkdir(parents=True)
    (content / "course" / "notebooks" / "mine.ipynb").write_text("{}")
    done = run_cell(content, course.url, stand_in)
    assert done.returncode != 0
    assert f"{content / 'course'} exists but holds no gpt_helpers.py" in done.stderr
    assert "rename that folder" in done.stderr
    assert (content / "course" / "notebooks" / "mine.ipynb").read_text() == "{}"
    assert sorted(p.name for p in content.iterdir()) == ["course"]


def test_existing_clone_is_updated(course, content, stand_in):
    assert run_cell(content, course.url, stand_in).report["version"] == 1
    course.publish(2)
    done = run_cell(content, course.url, stand_in)  # a restarted kernel starts in /content again
    assert done.returncode == 0, done.stderr
    assert done.report["version"] == 2
    assert "could not update" not in done.stdout


def test_failed_update_keeps_the_copy_and_says_so(course, content, stand_in):
    assert run_cell(content, course.url, stand_in).report["version"] == 1
    course.remote.rename(course.remote.with_name("moved.git"))
    done = run_cell(content, course.url, stand_in)
    assert done.returncode == 0, done.stderr
    assert done.report["version"] == 1
    assert f"could not update course/ from REPO_URL={course.url} (" in done.stdout
    assert "using the copy already here" in done.stdout


def test_uploaded_course_folder_is_used(content, stand_in):
    # the way out the cell's message offers: the course uploaded under the repository's name, not a clone
    (content / "course" / "notebooks").mkdir(parents=True)
    (content / "course" / "gpt_helpers.py").write_text("VERSION = 7\n")
    done = run_cell(content, "file:///nowhere/course.git", stand_in)
    assert done.returncode == 0, done.stderr
    assert done.report["version"] == 7
    assert "using the copy already here" in done.stdout


def test_missing_repository_is_reported_in_the_course_words(course, content, stand_in):
    url = course.remote.with_name("no-such-course.git").as_uri()
    done = run_cell(content, url, stand_in)
    assert_course_message(done, url)
    assert not (content / "no-such-course").exists()


def test_repository_without_the_course_is_refused(tmp_path, content, stand_in):
    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("not the course\n")
    git("init", "-q", "-b", "main", str(other))
    git("add", ".", cwd=other)
    git("commit", "-q", "-m", "other", cwd=other)
    done = run_cell(content, other.as_uri(), stand_in)
    assert_course_message(done, other.as_uri())
    assert "it has no gpt_helpers.py" in done.stderr
    assert not (content / "other").exists()


@pytest.fixture
def silent_server():
    """A server that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # closed by the test
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/course.git"
    server.close()
    for connection in held:
        connection.close()


def test_server_that_never_answers_fails_within_the_timeout(silent_server, content, stand_in):
    done = run_cell(content, silent_server, stand_in, timeout_s=2)
    assert_course_message(done, silent_server)
    assert done.seconds < 30, f"the clone took {done.seconds:.0f} s with CLONE_TIMEOUT_S = 2"
    assert not (content / "course").exists()


@pytest.fixture
def password_server():
    """A server that asks for a user name, as GitHub does for a repository that does not exist."""

    class AskForPassword(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="course"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AskForPassword)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/course.git"
    server.shutdown()
    server.server_close()


def test_server_asking_for_a_password_fails_without_prompting(password_server, content, stand_in):
    done = run_cell(content, password_server, stand_in)
    assert_course_message(done, password_server)
    assert "terminal prompts disabled" in done.stderr  # git never waits for a user name


@pytest.mark.parametrize("google", ["package-without-colab", "module-not-package"])
def test_outside_colab_without_the_course_says_where_to_open(content, tmp_path, google):
    site = tmp_path / "plain"
    site.mkdir()
    if google == "package-without-colab":
        (site / "google").mkdir()
        (site / "google" / "__init__.py").write_text("")
    else:  # find_spec("google.colab") raises when "google" is not a package
        (site / "google.py").write_text("")
    done = run_cell(content, "file:///nowhere/course.git", site)
    assert done.returncode != 0
    assert "FileNotFoundError: gpt_helpers.py not found" in done.stderr, done.stderr
    assert not any(content.iterdir())  # nothing was cloned


LOCAL_BEFORE = """
import subprocess, sys
_calls = []
subprocess.run = subprocess.Popen = lambda *a, **k: _calls.append(a)
_path, _cwd = list(sys.path), __import__("os").getcwd()
"""
LOCAL_AFTER = """
import json as _json
print("REPORT " + _json.dumps({"root": str(ROOT), "calls": _calls, "new_path": sys.path[:len(sys.path) - len(_path)],
                                "rest_of_path_kept": sys.path[len(sys.path) - len(_path):] == _path,
                                "cwd_kept": os.getcwd() == _cwd, "google_looked_up": "google" in sys.modules}))
"""


@pytest.mark.parametrize("folder", ["notebooks", "."])
def test_in_the_course_folder_it_only_puts_the_course_on_sys_path(stand_in, folder):
    # run twice, as a reader re-running the cell would: still one sys.path entry
    done = run_cell(ROOT / folder, "file:///nowhere/course.git", stand_in, before=LOCAL_BEFORE,
                    after=SETUP_CELL + LOCAL_AFTER)
    assert done.returncode == 0, done.stderr
    report = done.report
    assert Path(report["root"]) == ROOT
    assert report["new_path"] == [str(ROOT)] and report["rest_of_path_kept"]
    assert report["calls"] == [] and report["cwd_kept"]
    assert not report["google_looked_up"]  # the Colab branch is never considered
