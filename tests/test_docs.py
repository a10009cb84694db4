"""The README and docs/*.md run as written, and their links stay inside the repo.

Rules for fenced code blocks (the language is the first word of the info string):

- ``python``: run. All python blocks of one file run in order in one fresh
  subprocess and one namespace, so a later block may use an earlier block's
  names. The subprocess starts in an empty temporary directory with the
  repo's ``src`` first on ``PYTHONPATH`` and the caller's environment
  otherwise (``OPIR_CACHE_DIR`` included, so the C++ kernels are built once).
- ``sh`` / ``bash`` / ``shell``: every command line must be ``opir ...``; each
  runs as ``python -m opir ...`` with a short timeout and must exit 0.
- ``json`` / ``toml``: must parse.
- ``text`` or no language: diagrams and sample output, not run.
- Any other language fails the test, so nothing slips past unchecked.
- A block right after ``<!-- not-run: reason -->`` (the reason is required)
  is not run: installs, ``make``, ``torchrun``, benchmarks that take minutes.
- A block right after ``<!-- gpu: reason -->`` runs only where CUDA is
  available; elsewhere it is a skipped test that shows the reason.

Links: every markdown link or image target must be a relative path that
resolves to a file inside the repo (anchors into markdown files are checked
against their headings), and no ``http(s)://`` address may appear outside code:
an address inside a command (a package index for ``pip``) is an argument, not
a link.
Pages that other branches add (``PAGES_FROM_OTHER_BRANCHES``) may be missing
until those branches are merged; once present they are checked like any other.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
USER_SCRIPT = ROOT / "tests" / "typing" / "user_script.py"  # mypy checks it; here it runs
PAGES_FROM_OTHER_BRANCHES = {
    "docs/install.md",
    "docs/providers.md",
    "docs/writing-a-provider.md",
    "docs/activations.md",
}
RUN_LANGUAGES = {"python", "sh", "bash", "shell", "json", "toml"}
TEXT_LANGUAGES = {"", "text"}
FILE_TIMEOUT_S = 600  # all pages run at once; on a busy 2-core box one took over 240 s
COMMAND_TIMEOUT_S = 60
MARKER = re.compile(r"<!--\s*(not-run|gpu)\s*:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([^`\s]*)")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    source: str
    marker: str | None  # "not-run" / "gpu"
    reason: str

    @property
    def label(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of one markdown file, with the marker before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, language = m.group(1), m.group(2), m.group(3).lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        marker = MARKER.search(lines[prev]) if prev >= 0 else None
        found.append(
            Block(
                path,
                start + 1,
                language,
                "\n".join(body) + "\n",
                marker.group(1) if marker else None,
                marker.group(2) if marker else "",
            )
        )
    return found


def all_blocks() -> list[Block]:
    return [b for path in doc_files() for b in blocks_of(path)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


_RUNNER = textwrap.dedent(
    """
    import json, sys
    namespace = {"__name__": "__main__"}
    for label, source in json.load(open(sys.argv[1], encoding="utf-8")):
        print(f"--- {label}", flush=True)
        exec(compile(source, label, "exec"), namespace)
    """
)


def _runs_here(block: Block) -> bool:
    return block.marker is None or (block.marker == "gpu" and torch.cuda.is_available())


# ------------------------------------------------------------------ markers
def test_markers_give_a_reason() -> None:
    bad = [b.label for b in all_blocks() if b.marker and not b.reason]
    assert not bad, f"a not-run/gpu marker needs a reason after the colon: {bad}"


def test_every_block_has_a_known_language() -> None:
    bad = [
        f"{b.label} ({b.language})"
        for b in all_blocks()
        if b.language not in RUN_LANGUAGES | TEXT_LANGUAGES
    ]
    assert not bad, f"code blocks in a language this test cannot check: {bad}"


# ------------------------------------------------------------------ python
_PYTHON_FILES = [p for p in doc_files() if any(b.language == "python" for b in blocks_of(p))]


@pytest.fixture(scope="module")
def python_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Path, _Run]]:
    """Start every file's python blocks at once: the files are independent, so
    they run in parallel and the test takes about as long as the slowest file."""
    runs: dict[Path, _Run] = {}
    for path in _PYTHON_FILES:
        blocks = [b for b in blocks_of(path) if b.language == "python" and _runs_here(b)]
        if not blocks:
            continue
        work = tmp_path_factory.mktemp(path.stem)
        script = work / "blocks.json"
        script.write_text(json.dumps([(b.label, b.source) for b in blocks]), encoding="utf-8")
        log = open(work / "output.txt", "w+", encoding="utf-8")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(
            [sys.executable, "-c", _RUNNER, str(script)],
            cwd=work,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        runs[path] = _Run(proc, log)
    work = tmp_path_factory.mktemp("user_script")
    log = open(work / "output.txt", "w+", encoding="utf-8")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, str(USER_SCRIPT)], cwd=work, env=_env(), stdout=log, stderr=log, text=True
    )
    runs[USER_SCRIPT] = _Run(proc, log)
    yield runs
    for run in runs.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        run.log.close()


@dataclass
class _Run:
    proc: subprocess.Popen[str]
    log: IO[str]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()


@pytest.mark.parametrize("path", _PYTHON_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(path: Path, python_runs: dict[Path, _Run]) -> None:
    if path not in python_runs:
        pytest.skip(f"every python block of {path.name} is marked")
    run = python_runs[path]
    try:
        code = run.proc.wait(timeout=FILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        pytest.fail(f"{path.name}: blocks still running after {FILE_TIMEOUT_S} s\n{run.output()}")
    assert code == 0, f"{path.name}: a block failed\n{run.output()}"


def test_typed_user_script_runs(python_runs: dict[Path, _Run]) -> None:
    run = python_runs[USER_SCRIPT]
    assert run.proc.wait(timeout=FILE_TIMEOUT_S) == 0, run.output()


_gpu_blocks = [b for b in all_blocks() if b.marker == "gpu"]


@pytest.mark.parametrize("block", _gpu_blocks, ids=lambda b: b.label)
def test_gpu_blocks_are_reported(block: Block) -> None:
    """GPU blocks run with their file on a GPU machine; here they are visible skips."""
    if not torch.cuda.is_available():
        pytest.skip(f"{block.label} needs a GPU: {block.reason}")


# ------------------------------------------------------------------ shell
def _commands(block: Block) -> list[str]:
    commands = []
    for raw in block.source.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


_shell_blocks = [b for b in all_blocks() if b.language in {"sh", "bash", "shell"} and _runs_here(b)]


@pytest.mark.parametrize("block", _shell_blocks, ids=lambda b: b.label)
def test_shell_blocks_run(block: Block, tmp_path: Path) -> None:
    for command in _commands(block):
        words = command.split()
        assert words[0] == "opir", (
            f"{block.label}: `{command}` is not an `opir` command; run it here or mark the "
            "block <!-- not-run: reason -->"
        )
        proc = subprocess.run(
            [sys.executable, "-m", "opir", *words[1:]],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        assert proc.returncode == 0, f"{block.label}: `{command}`\n{proc.stdout}\n{proc.stderr}"


# ------------------------------------------------------------------ data
@pytest.mark.parametrize(
    "block",
    [b for b in all_blocks() if b.language in {"json", "toml"} and _runs_here(b)],
    ids=lambda b: b.label,
)
def test_data_blocks_parse(block: Block) -> None:
    if block.language == "json":
        json.loads(block.source)
    else:
        tomllib.loads(block.source)


# ------------------------------------------------------------------ links
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _without_fences(text: str) -> str:
    return re.sub(r"^(\s*)(```+|~~~+).*?^\1\2\s*$", "", text, flags=re.S | re.M)


def _outside_code(text: str) -> str:
    """The text with fenced blocks and inline code removed."""
    return re.sub(r"`[^`\n]*`", "", _without_fences(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _without_fences(path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", text, flags=re.M)}


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_inside_the_repo(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    problems = []
    prose = _outside_code(text)
    if re.search(r"https?://", prose):
        problems.append("an http(s) address outside code; link only to files in the repo")
    for target in LINK.findall(prose):
        file_part, _, anchor = target.partition("#")
        if re.match(r"^[a-z][a-z0-9+.-]*:", file_part):
            problems.append(f"{target}: not a relative path")
            continue
        resolved = (path.parent / file_part).resolve() if file_part else path
        rel = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else None
        if rel is None:
            problems.append(f"{target}: leaves the repo")
        elif not resolved.exists():
            if rel not in PAGES_FROM_OTHER_BRANCHES:
                problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading with anchor #{anchor}")
    assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(problems)


def test_docs_do_not_cite_the_old_design_file() -> None:
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"DESIGN\s*§|shared/DESIGN", text), path.name


# ------------------------------------------------------------------ the checker itself
def test_the_block_parser_sees_markers_and_languages(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# T\n\n<!-- not-run: slow -->\n```sh\nmake run\n```\n\n```python\nx = 1\n```\n"
        "\n```\ndiagram\n```\n",
        encoding="utf-8",
    )
    found = blocks_of(page)
    assert [(b.language, b.marker, b.reason) for b in found] == [
        ("sh", "not-run", "slow"),
        ("python", None, ""),
        ("", None, ""),
    ]
    assert found[1].source == "x = 1\n" and found[1].line == 8


def test_slugs_match_github() -> None:
    assert slug("Numerics contract") == "numerics-contract"
    assert slug("`opir.compile` and `opir.backend`") == "opircompile-and-opirbackend"
    assert slug("Measured: `opir bench model`") == "measured-opir-bench-model"
