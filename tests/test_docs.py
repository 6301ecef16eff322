"""The documentation: the site builds strictly, and every code block of README.md and docs/ runs.

The convention, for whoever writes README.md or a page under docs/:

- Every fenced code block (```` ```lang ```` at the start of a line) names its language.
  ``python``/``py`` blocks run in a fresh Python process; ``sh``/``bash``/``shell`` blocks run
  with ``bash -e``. ``text``, ``json``, ``yaml`` and ``toml`` blocks are shown output or data
  and are not run.
- A page's blocks run in order, each in a fresh process, in a scratch folder of that page (so a
  block may use a file an earlier block of its page wrote) holding ``models/<name>`` links to the tiny models the tests export (``MODEL_LINKS``
  below), and ``PATH`` starting with this venv's ``bin``, so blocks keep their real-looking paths:
  ``bgeort.Embedder("models/bge-small-en-v1.5")``, ``bgeort doctor models/bge-reranker-base``.
- A block that cannot run here (a pip install, a hub download, a real export, a GPU, a server
  that does not stop) has, on the nearest non-blank line before it, an HTML comment with the
  reason: ``<!-- not run: needs a CUDA GPU -->``. A marker without a reason, or one that is not
  followed by a runnable block, fails the test.
- A page whose blocks call a server declares it once, anywhere on the page:
  ``<!-- docs server: bgeort serve models/bge-small-en-v1.5 -->``. Before the page's first block
  runs, the test starts that command in the page's scratch folder, waits for ``GET
  http://127.0.0.1:8000/health`` (the port the pages use), and stops it when the module ends.

The performance pages include bench/results/*.md through pymdownx.snippets, so a committed result
that no page includes fails `test_every_committed_result_is_in_the_docs`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN_AS = {"python": "python", "py": "python", "sh": "bash", "bash": "bash", "shell": "bash"}
SHOWN = {"text", "json", "yaml", "toml"}
FENCE = re.compile(r"^(```|~~~)\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*not run:(.*?)-->\s*$")
SERVER = re.compile(r"^<!--\s*docs server:(.*?)-->\s*$", flags=re.MULTILINE)
SERVER_URL = "http://127.0.0.1:8000"
SERVER_START_S = 120
# models/<name> in the scratch folder -> the fixture exported for it (tests/conftest.py).
MODEL_LINKS = {"bge-small-en-v1.5": "tiny_model", "bge-reranker-base": "bert_reranker", "bge-m3": "m3_model"}
BLOCK_TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    not_run: str | None  # the marker's reason, "" for a marker without one, None without a marker

    @property
    def name(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def read_blocks(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a markdown file, and the problems found in its markers."""
    blocks, problems = [], []
    lines = path.read_text(encoding="utf-8").splitlines()
    previous = ""  # the last non-blank line outside a block
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            if previous and MARKER.match(previous) and lines[index].strip():
                problems.append(f"{path.name}:{index}: a not-run marker that no code block follows")
            if lines[index].strip():
                previous = lines[index]
            index += 1
            continue
        fence, language = opening.groups()
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        if end == len(lines):
            problems.append(f"{path.name}:{index + 1}: a code block that is never closed")
        marker = MARKER.match(previous)
        blocks.append(Block(path, index + 1, language.lower(), "\n".join(lines[index + 1:end]) + "\n",
                            marker.group(1).strip() if marker else None))
        previous = ""
        index = end + 1
    if previous and MARKER.match(previous):
        problems.append(f"{path.name}: ends with a not-run marker that no code block follows")
    return blocks, problems


ALL_BLOCKS = [block for path in DOC_FILES for block in read_blocks(path)[0]]
RUNNABLE = [block for block in ALL_BLOCKS if block.language in RUN_AS and block.not_run is None]


def test_readme_stays_short():
    """The front door is read in a minute: at most 10,000 characters and 250 lines."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text) <= 10_000 and len(text.splitlines()) <= 250, (len(text), len(text.splitlines()))


def test_blocks_follow_the_convention():
    problems = [problem for path in DOC_FILES for problem in read_blocks(path)[1]]
    for block in ALL_BLOCKS:
        if not block.language:
            problems.append(f"{block.name}: the block names no language (python, sh, text, ...)")
        elif block.language not in RUN_AS and block.language not in SHOWN:
            problems.append(f"{block.name}: unknown language {block.language!r} "
                            f"(run: {sorted(RUN_AS)}; shown: {sorted(SHOWN)})")
        if block.not_run == "":
            problems.append(f"{block.name}: a not-run marker without a reason")
        if block.not_run is not None and block.language in SHOWN:
            problems.append(f"{block.name}: a not-run marker on a {block.language} block, which never runs")
    assert not problems, "\n".join(problems)
    assert len(RUNNABLE) >= 10, [block.name for block in RUNNABLE]  # the quick starts did not vanish


@pytest.fixture(scope="module")
def scratches(request, tmp_path_factory) -> dict:
    """A scratch folder per page, made on its first block: a page's blocks run in order in it."""
    folders = {}

    def folder_for(page: Path) -> Path:
        if page not in folders:
            folder = folders[page] = tmp_path_factory.mktemp("docs-scratch")
            (folder / "models").mkdir()
            for name, fixture in MODEL_LINKS.items():
                (folder / "models" / name).symlink_to(request.getfixturevalue(fixture), target_is_directory=True)
        return folders[page]

    return folder_for


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def servers(scratches):
    """The server a page declares, started once in the page's scratch folder and stopped at the end."""
    started = {}

    def stop(process) -> None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def ensure(page: Path, env: dict) -> None:
        for other in [other for other in started if other != page]:  # one page's server at a time, on one port
            stop(started.pop(other))
        declared = SERVER.search(page.read_text(encoding="utf-8"))
        if declared is None or page in started:
            return
        command = declared.group(1).strip()
        assert command, f"{page.name}: a docs server marker without a command"
        assert not _answers(f"{SERVER_URL}/health"), (
            f"{SERVER_URL} already answers before {page.name}'s server starts: stop what listens on port 8000")
        log = scratches(page) / "server.log"
        process = started[page] = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=scratches(page), env=env,
                                                    stdout=log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVER_START_S
        while not _answers(f"{SERVER_URL}/health"):
            assert process.poll() is None, f"{command!r} exited {process.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{command!r} not ready in {SERVER_START_S} s:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)

    yield ensure
    for process in started.values():
        stop(process)


@pytest.mark.export
@pytest.mark.parametrize("block", RUNNABLE, ids=[block.name for block in RUNNABLE])
def test_code_block_runs(block: Block, scratches, servers):
    scratch = scratches(block.file)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONWARNINGS="default")
    env.pop("PYTHONPATH", None)  # the docs' reader has bgeort installed, not this checkout on its path
    servers(block.file, env)
    command = ([sys.executable, "-c", block.code] if RUN_AS[block.language] == "python"
               else ["bash", "-e", "-o", "pipefail", "-c", block.code])
    done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    assert done.returncode == 0, (f"{block.name} failed (exit {done.returncode}); mark it with "
                                  f"<!-- not run: REASON --> if it cannot run here\n{block.code}\n"
                                  f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}")


DOCS_EXTRA = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_docs_extra() -> list[str]:
    missing = []
    for name in DOCS_EXTRA:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except ModuleNotFoundError:
            missing.append(name)
    return missing


def test_site_builds_strictly(tmp_path):
    missing = _missing_docs_extra()
    if missing:
        pytest.skip(f"the docs extra is not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("encode_queries", "compute_score", "load_manifest", "ModelFolderError"):
        assert name in api, f"the API page lacks {name}: mkdocstrings rendered nothing for it"
    assert "FlagEmbedding" in api  # text from Embedder.__init__'s docstring, not only the names
    cpu_page = (site / "performance" / "cpu" / "index.html").read_text(encoding="utf-8")
    committed = (ROOT / "bench" / "results" / "cpu.md").read_text(encoding="utf-8")
    first_row = next(line for line in committed.splitlines() if line.startswith("| bgeort-int8 |"))
    assert first_row.split("|")[3].strip() in cpu_page  # the committed table, included as it is
    assert (site / "performance" / "results" / "cpu.png").read_bytes() == (ROOT / "bench" / "results" /
                                                                           "cpu.png").read_bytes()


def test_every_committed_result_is_in_the_docs():
    results = ROOT / "bench" / "results"
    committed = {path.relative_to(ROOT).as_posix() for path in results.rglob("*.md")
                 if "tmp" not in path.relative_to(results).parts}
    pages = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "docs").rglob("*.md"))
    included = set(re.findall(r'^--8<-- "([^"]+)"\s*$', pages, flags=re.MULTILINE))
    assert not committed - included, (f"results no docs page includes (add a --8<-- line to a page under "
                                      f"docs/performance/): {sorted(committed - included)}")
    assert not included - committed, f"pages include files that are not committed results: {sorted(included - committed)}"
