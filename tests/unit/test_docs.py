"""README.md and docs/*.md name only what exists: files, headings, make targets, `cxr` commands and settings.
The README is the first page: its first screen gives `make demo` and `make test`, it keeps its Models,
Architecture and Layout sections, and it links every page of docs/.

What is checked, and what is left alone because it could only be guessed at:
- links: every relative link goes to a file that exists, and a `#anchor` into a Markdown file (or into the
  page itself) to one of its headings, slugged as GitHub does. Web links are not followed.
- paths: a path of the repository named in the text (`cxr/reports/intake.py`, tests/integration/...) exists, and
  so does a module run as `python -m benchmarks.x`. Only paths under our top-level folders are read (not
  /etc/..., not ../shared/...), and not those with a placeholder or a glob (`<model>`, `*-scale.md`); a module
  path naming a class (`gateway/embedding.Embedder`) is the module's file.
- make targets: in code (a code span or a code block line), each word after `make` up to the first that is
  not a target name (a VAR=value, `&&`, a comment) is a target of the Makefile. Prose "make" is not read.
- `cxr` commands: in code, `cxr` followed by words walks the real parser (cxr_cli.main.build_parser, built,
  never run): each word must be a subcommand where the parser has subcommands, and each `--option` after them
  one of that command's options. An upper-case word (`cxr COMMAND --help`) is a placeholder and ends the walk.
- the code's pointers: a `docs/<page>.md` named in our Python (a message, a help text, a docstring) exists.
- settings: a `CXR_<NAME>` variable and a `name = ...` line of a ```toml block name a field of
  cxr.settings.Settings; a setting in backticks followed by a number (`search_batch_wait_ms`, 0 ms;
  `drain_grace_s` (10 s); a table row `| `max_decode_queue` | 64 images`) is a field whose default is that
  number (units by the name's suffix: _s takes ms/s/min/h, _ms takes ms). Values in words, strings and
  examples written `name = value` are not compared: the text says what they are for, not their defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from cxr.settings import Settings
from cxr_cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SETTINGS = {f.name: f.default for f in dataclasses.fields(Settings)}
# CXR_* variables that are not settings: the search-page test's switch, Compose's uid of the gateway.
NOT_SETTINGS = {"CXR_UPDATE_SCREENSHOT", "CXR_UID", "CXR_NAME"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")  # a code span may wrap onto the next line
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
TARGET = re.compile(r"^[a-z][a-z0-9-]*$")
# A number right after a setting, then its unit if any: `name`, 4096 | `name` (0.2 s | a table row starting
# | `name` | 64 calls. Not "`name`, 0: off" (what a value means), nor a test's name followed by a count.
NUMBER = r"([0-9][0-9,.]*+)(?!:)(?: (ms|s|min|h|megapixels)\b)?"
VALUE = re.compile(r"`((?!test_)[a-z]+(?:_[a-z0-9]+)+)`(?:, | \()" + NUMBER + r"|^\| `([a-z]+(?:_[a-z0-9]+)+)` \| "
                   + NUMBER, re.MULTILINE)
# Top-level folders of the repository a page names paths under, and folders only a build makes.
FOLDERS = ("cxr", "cxr_cli", "gateway", "indexing", "export", "training", "benchmarks", "tests", "deploy",
           "clients", "protos", "weights", "docs", "model_repository")
REPO_PATH = re.compile(r"(?<![\w/.<-])((?:" + "|".join(FOLDERS) + r")/[\w/.*<>{},-]*)")
BUILT = {"clients/python/dist"}  # `make client-wheel`
UNITS = {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "megapixels": 1e6, "": 1}


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced code block."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def _prose(text: str) -> str:
    """The page without its code blocks (a `# comment` in a shell block is no heading, nor its `[x](y)` a link)."""
    return FENCE.sub("", text)


def _code(text: str) -> list[str]:
    """Every piece of code on a page: code spans of the prose, and code block lines (continuations joined,
    comments cut off)."""
    pieces = [span.replace("\n", " ") for span in SPAN.findall(_prose(text))]
    for _, body in _blocks(text):
        for line in body.replace("\\\n", " ").splitlines():
            pieces.append(line.split(" #")[0])
    return pieces


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", _prose(path.read_text()), re.MULTILINE)}


def _commands(piece: str, program: str) -> list[list[str]]:
    """The words after each `program` that starts a command in a piece of code (`a && b`, `x | y` split)."""
    commands = []
    for part in re.split(r"&&|\|\||;|\s\|\s|\$\(", piece):
        words = part.replace("[", " ").replace("]", " ").split()
        if program in words:
            commands.append(words[words.index(program) + 1:])
    return commands


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def _cli_problems(words: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """What in `cxr <words>` the parser does not know."""
    path = ["cxr"]
    for word in words:
        if word.isupper() or "<" in word:
            return []
        commands = _subparsers(parser)
        if commands and not word.startswith("-"):
            if word not in commands:
                return [f"`{' '.join(path)} {word}`: no such command (there are {sorted(commands)})"]
            parser, path = commands[word], path + [word]
        elif word.startswith("--") and word.split("=")[0] not in parser._option_string_actions:
            return [f"`{' '.join(path)}` has no option {word.split('=')[0]}"]
    return []


def _exists(path: str) -> bool:
    """A file or folder of the repository, or a module's file with a name in it (`gateway/embedding.Embedder`)."""
    module = path.rsplit(".", 1)[0] + ".py"
    return path in BUILT or (ROOT / path).exists() or (ROOT / module).exists()


def _make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_-]+):(?!=)", makefile, re.MULTILINE))


def _in_setting_unit(name: str, number: float, unit: str) -> float:
    """The number the text gives, in the unit the setting is in: seconds, or milliseconds for a name in _ms."""
    value = number * UNITS[unit]
    return value * 1000 if name.endswith("_ms") and unit else value


def test_the_readme_is_a_first_page_that_links_every_page_of_docs():
    readme = (ROOT / "README.md").read_text()
    first_screen = "\n".join(readme.splitlines()[:30])
    assert "make demo" in first_screen and "make test" in first_screen
    assert {"models", "architecture", "layout"} <= _anchors(ROOT / "README.md")
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in LINK.findall(_prose(readme))}
    unlinked = [_id(page) for page in PAGES[1:] if page.resolve() not in linked]
    assert not unlinked, f"README.md links no line to {unlinked}: add one saying what is there"


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_relative_links_go_to_files_and_headings_that_exist(page):
    problems = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:: not followed
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        if not linked.exists():
            problems.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            problems.append(f"{target}: {_id(linked)} has no heading #{anchor}")
    assert not problems, f"{_id(page)}: " + "; ".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_repository_paths_and_modules_named_exist(page):
    text = page.read_text()
    paths = {m.rstrip(".,:;") for m in REPO_PATH.findall(text) if not re.search(r"[*<>{}]", m)}
    modules = {m.replace(".", "/") for m in re.findall(r"python -m ([\w.]+)", text)}
    missing = sorted(p for p in paths if not _exists(p)) + sorted(
        m for m in modules if not (ROOT / f"{m}.py").exists() and not (ROOT / m / "__init__.py").exists())
    assert not missing, f"{_id(page)} names what the repository lacks: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_make_targets_named_exist_in_the_makefile(page):
    targets = _make_targets()
    named = set()
    for piece in _code(page.read_text()):
        for words in _commands(piece, "make"):
            for word in words:
                if not TARGET.match(word):
                    break
                named.add(word)
    assert named <= targets, f"{_id(page)} names make targets the Makefile lacks: {sorted(named - targets)}"


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_cxr_commands_and_options_named_exist_in_the_parser(page):
    parser = build_parser()
    problems = [problem for piece in _code(page.read_text()) for words in _commands(piece, "cxr")
                for problem in _cli_problems(words, parser)]
    assert not problems, f"{_id(page)}: " + "; ".join(sorted(set(problems)))


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_settings_named_exist_with_the_defaults_given(page):
    text = page.read_text()
    named = {m.lower() for m in re.findall(r"\bCXR_([A-Z][A-Z0-9_]*)", text) if f"CXR_{m}" not in NOT_SETTINGS}
    for language, body in _blocks(text):
        if language == "toml":
            named |= set(re.findall(r"^([a-z_]+) =", body, re.MULTILINE))
    problems = [f"{name}: no such setting" for name in sorted(named - set(SETTINGS))]
    for found in VALUE.findall(_prose(text)):
        name, number, unit = found[:3] if found[0] else found[3:]
        default = SETTINGS.get(name)
        if name not in SETTINGS:
            problems.append(f"`{name}` is given a default ({number}) but is no setting")
        elif isinstance(default, (int, float)) and _in_setting_unit(name, float(number.replace(",", "")), unit) != default:
            problems.append(f"`{name}`: the page says {number} {unit or ''}, the default is {default}")
    assert not problems, f"{_id(page)}: " + "; ".join(problems)


def test_docs_pages_named_in_the_code_exist():
    named = {(_id(path), page) for folder in FOLDERS if folder != "docs" for path in (ROOT / folder).rglob("*.py")
             for page in re.findall(r"\bdocs/[\w-]+\.md", path.read_text())}
    missing = sorted(f"{where}: {page}" for where, page in named if not (ROOT / page).exists())
    assert named and not missing, f"pages named in the code that docs/ lacks: {missing}"


def test_the_checks_see_what_they_check():
    """The patterns above find things on the pages (a regex that matches nothing passes every test)."""
    text = "\n".join(page.read_text() for page in PAGES)
    assert any(_commands(piece, "make") for piece in _code(text))
    assert sum(len(_commands(piece, "cxr")) for piece in _code(text)) > 20
    assert len(VALUE.findall(_prose(text))) > 10
    assert len(LINK.findall(_prose(text))) > 10
    assert len(REPO_PATH.findall(text)) > 50 and not _exists("cxr/no_such_module.py")
    assert _cli_problems(["index", "nosuch"], build_parser()) and _cli_problems(["serve", "--nosuch"], build_parser())
