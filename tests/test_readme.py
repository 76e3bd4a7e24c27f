"""The README is a user's page: short, and every command it shows runs as written.

Every command line in README.md's fenced shell blocks that runs a repository script
(``python pipelines/X.py ...``, also after ``ray job submit ... --``; ``bash pipelines/X.sh``;
``make TARGET``) must name a script that exists, flags that script's ``--help`` lists, and
Makefile targets that exist; the layout block names only files that exist. The docs pages
exist, and no page speaks of the development sessions ("this stop", "the previous stop") or
cites commit hashes.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ["docs/results.md", "docs/decisions.md", "docs/benchmarks.md", "docs/reliability.md", "CHANGELOG.md"]
MAX_LINES = 250

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
SHELL_LANGS = {"", "bash", "sh", "shell"}
PY_SCRIPT = re.compile(r"(?:^|[\s/])python[0-9.]*\s+(pipelines/[\w.-]+\.py)\b(.*)")
SH_SCRIPT = re.compile(r"(?:^|\s)(?:bash|sh)\s+(pipelines/[\w.-]+\.sh)\b")
MAKE = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*make(?:\s+(.*))?$")
FLAG = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")
SESSION_WORD = re.compile(
    r"\b(this|previous|earlier|prior|later|next|last|each|every|until the|since the)\s+stops?\b"
    r"|\bsaid plainly\b|\bearlier headline\b",
    re.I,
)
HEX = re.compile(r"(?<![\w./-])[0-9a-f]{7,40}(?![\w-])")


def shell_blocks(text: str) -> list[str]:
    """The bodies of the fenced ```bash / ```sh / ```shell / ``` blocks."""
    return [body for lang, body in FENCE.findall(text) if lang.lower() in SHELL_LANGS]


def command_lines(block: str) -> list[str]:
    """One string per command: comments dropped, ``\\`` continuations joined, split at && ; ||."""
    joined, buf = [], ""
    for line in block.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            joined.append(buf.strip())
        buf = ""
    if buf.strip():
        joined.append(buf.strip())
    commands = []
    for line in joined:
        parts = re.split(r"&&|\|\||;|\s\|\s", line)
        commands += [" ".join(c.split()) for c in parts if c.strip()]
    return commands


def script_flags(tail: str) -> list[str]:
    """Flags named after a script: up to a bare ``--`` (what follows goes elsewhere) or a redirection."""
    tail = re.split(r"\s--(?:\s|$)|\s[12]?>", " " + tail + " ")[0]
    return [f.split("=")[0] for f in FLAG.findall(tail)]


@functools.lru_cache(maxsize=None)
def help_text(script: str) -> str:
    proc = subprocess.run(
        [sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{script} --help failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@functools.lru_cache(maxsize=None)
def make_targets() -> frozenset[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?!=)", line)
        if m:
            targets.update(m.group(1).split())
    return frozenset(targets)


def readme_commands() -> list[str]:
    return [c for block in shell_blocks(README.read_text()) for c in command_lines(block)]


def test_readme_is_at_most_250_lines():
    n = len(README.read_text().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; at most {MAX_LINES}: move the detail to docs/"


def test_command_parser_handles_continuations_and_ray_job_submit():
    block = (
        "source x && ray job submit --working-dir . -- \\\n"
        "    python pipelines/extract.py --corpus /c --out /o   # a comment --not-a-flag\n"
        "make demo DEMO_ITEMS=10; .venv/bin/python pipelines/ray_head.py start D -- --num-gpus=1\n"
    )
    cmds = command_lines(block)
    assert cmds == [
        "source x",
        "ray job submit --working-dir . -- python pipelines/extract.py --corpus /c --out /o",
        "make demo DEMO_ITEMS=10",
        ".venv/bin/python pipelines/ray_head.py start D -- --num-gpus=1",
    ]
    m = PY_SCRIPT.search(cmds[1])
    assert m.group(1) == "pipelines/extract.py" and script_flags(m.group(2)) == ["--corpus", "--out"]
    m = PY_SCRIPT.search(cmds[3])
    assert m.group(1) == "pipelines/ray_head.py" and script_flags(m.group(2)) == []


def test_readme_commands_name_real_scripts_flags_and_targets():
    commands = readme_commands()
    checked, problems = 0, []
    for cmd in commands:
        for m in PY_SCRIPT.finditer(cmd):
            script, tail = m.group(1), m.group(2)
            checked += 1
            if not (ROOT / script).is_file():
                problems.append(f"{cmd!r}: no {script}")
                continue
            text = help_text(script)
            for flag in script_flags(tail):
                if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
                    problems.append(f"{cmd!r}: {script} --help does not list {flag}")
        for m in SH_SCRIPT.finditer(cmd):
            checked += 1
            if not (ROOT / m.group(1)).is_file():
                problems.append(f"{cmd!r}: no {m.group(1)}")
        m = MAKE.search(cmd)
        if m:
            targets = [w for w in (m.group(1) or "").split() if "=" not in w and not w.startswith("-")]
            checked += 1
            for target in targets or ["(default)"]:
                if target not in make_targets():
                    problems.append(f"{cmd!r}: no Makefile target {target!r}")
    assert checked >= 5, f"only {checked} repository commands found in README.md's code blocks"
    assert not problems, "\n".join(problems)


def test_readme_shows_the_first_two_commands_first():
    blocks = shell_blocks(README.read_text())
    first = command_lines(blocks[0])
    assert first[:2] == ["make demo", "make test"], first


@pytest.mark.parametrize("page", DOCS)
def test_docs_pages_exist(page):
    assert (ROOT / page).is_file(), f"{page} is missing"


def _pages() -> list[Path]:
    return [README] + [ROOT / p for p in DOCS if (ROOT / p).is_file()]


def test_no_page_speaks_of_sessions_or_points_outside_the_repository():
    problems = []
    for page in _pages():
        for i, line in enumerate(page.read_text().splitlines(), 1):
            if SESSION_WORD.search(line):
                problems.append(f"{page.name}:{i}: {line.strip()}")
            if "../shared/" in line:
                problems.append(f"{page.name}:{i}: points outside the repository: {line.strip()}")
    assert not problems, "\n".join(problems)


def test_no_page_cites_commit_hashes():
    problems = []
    for page in _pages():
        for i, line in enumerate(page.read_text().splitlines(), 1):
            for word in HEX.findall(line):
                if re.search(r"[a-f]", word) and re.search(r"[0-9]", word):
                    problems.append(f"{page.name}:{i}: {word!r} looks like a commit hash")
    assert not problems, "\n".join(problems)


def test_layout_names_files_that_exist():
    """Every file the README's layout block names is in the folder it is listed under."""
    blocks = [b for b in shell_blocks(README.read_text()) if re.search(r"^scalemm/\s", b, re.M)]
    assert blocks, "no layout block (a fenced block with a line starting 'scalemm/')"
    folder, missing, named = None, [], 0
    for line in blocks[0].splitlines():
        m = re.match(r"^([\w.]+/)\s", line)
        if m:
            folder = m.group(1)
        elif re.match(r"^\S", line):
            folder = None
        if folder is None:
            continue
        for name in re.findall(r"(?<![\w/.-])([\w-]+\.(?:py|yaml|sh))\b", line):
            named += 1
            hits = list((ROOT / folder).rglob(name))
            if not hits:
                missing.append(f"{folder}{name}")
    assert named >= 50, f"only {named} files named in the layout block"
    assert not missing, f"the layout names files that do not exist: {missing}"
