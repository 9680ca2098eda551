"""Every `icm ...` command the README and docs/ show must still parse with the real `icm` parser.

A renamed or removed flag otherwise leaves the docs telling newcomers to type a command that fails.
Nothing is run: each command goes through `build_parser().parse_args` only (no model, no database),
so the whole file takes about a second.

What counts as a shown command:
- in a fenced block (```bash, ```sh, ```console or no language), every shell command whose program
  is `icm` (`.venv/bin/icm` too, or `python -m icm_engine.cli`), after joining `\\` continuations,
  dropping `# comments`, splitting `&&`, `||`, `|`, `;` chains and loops (`do icm ...`) and
  skipping `VAR=value` prefixes. These must parse completely.
- an inline code span that starts with `icm` (prose quoting a command). Prose often names a
  command with only the flags it is talking about, so a span may leave out a required argument;
  every flag, choice and value it does show must parse.

Values the reader fills in are taken as opaque: `$VAR`, `${VAR}`, `$(...)` and placeholders in
capitals (`N`, `RUN_ID`, `FILE`). Each is replaced by a value that the option's own type and
choices accept, so the check is about the flag names and the literal values. `[--flag VALUE]`
(an optional part, in usage style) is read without its brackets.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from icm_engine.cli import entry

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh"}
SHELL_KEYWORDS = {"do", "then", "else", "time", "!", "{", "exec"}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*,?$")  # N, RUN_ID, FILE, S, (as in `--seeds S,`)
SUBSTITUTION = re.compile(r"\$\([^()]*\)")  # $(...) without nesting
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SEPARATORS = {"&&", "||", "|", ";", "&", ";;", "(", ")"}
# What `icm` is invoked as; the rest of the words are its arguments.
PROGRAMS = ("icm",)
MODULE_FORMS = (("python", "-m", "icm_engine.cli"), ("python3", "-m", "icm_engine.cli"))


@dataclass(frozen=True)
class ShownCommand:
    where: str  # file:line
    text: str  # as the reader sees it, on one line
    argv: tuple[str, ...]  # the words after `icm`
    inline: bool  # from a code span in prose, not a block

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def _program_length(words: list[str]) -> int:
    """How many leading words name `icm` (0: not an icm command)."""
    if words and Path(words[0]).name in PROGRAMS:
        return 1
    for form in MODULE_FORMS:
        if len(words) >= 3 and Path(words[0]).name == form[0] and tuple(words[1:3]) == form[1:]:
            return 3
    return 0


def _unbracket(text: str) -> str:
    """`[--out report.html]` (usage style: optional) read as `--out report.html`."""
    return re.sub(r"\[(-[^\[\]]*)\]", r"\1", text)


def icm_commands_in_shell(text: str) -> list[tuple[str, list[str]]]:
    """The icm commands in one logical shell line: (the segment's text, its words after `icm`)."""
    text = SUBSTITUTION.sub("$SUBSTITUTION", _unbracket(text))
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        words = list(lexer)
    except ValueError as error:  # an unclosed quote: say so rather than skip the line
        raise AssertionError(f"cannot split {text!r} as shell words: {error}") from None
    segments, current = [], []
    for word in words + [";"]:
        if word in SEPARATORS:
            segments.append(current)
            current = []
        else:
            current.append(word)
    found = []
    for segment in segments:
        while segment and (segment[0] in SHELL_KEYWORDS or ASSIGNMENT.match(segment[0])):
            segment = segment[1:]
        skip = _program_length(segment)
        if skip:
            found.append((" ".join(segment), segment[skip:]))
    return found


def _logical_lines(block: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """A fenced block's lines with `\\` continuations joined, each with its first line's number."""
    joined, start, parts = [], None, []
    for number, line in block:
        if start is None:
            start = number
        if line.startswith("$ "):  # a console prompt
            line = line[2:]
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        parts.append(line)
        joined.append((start, " ".join(parts)))
        start, parts = None, []
    if parts:
        joined.append((start, " ".join(parts)))
    return joined


def commands_in(path: Path, root: Path = ROOT) -> list[ShownCommand]:
    name = path.relative_to(root).as_posix()
    lines = path.read_text().splitlines()
    found: list[ShownCommand] = []
    prose: list[tuple[int, str]] = []
    block: list[tuple[int, str]] | None = None
    language = ""
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence and block is None:
            block, language = [], fence.group(2).lower()
            continue
        if fence and block is not None:
            if language in SHELL_LANGUAGES:
                for start, text in _logical_lines(block):
                    for shown, argv in icm_commands_in_shell(text):
                        found.append(ShownCommand(f"{name}:{start}", shown, tuple(argv), inline=False))
            block = None
            continue
        if block is not None:
            block.append((number, line))
        else:
            prose.append((number, line))
    found.extend(_inline_commands(name, prose))
    return found


def _inline_commands(name: str, prose: list[tuple[int, str]]) -> list[ShownCommand]:
    """Code spans in prose that quote an icm command; a span may run over a line break."""
    text = "\n".join(line for _, line in prose)
    starts = [0]
    for _, line in prose:
        starts.append(starts[-1] + len(line) + 1)
    found = []
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        span = " ".join(match.group(1).split())
        if not re.match(r"^(\S*/)?icm(\s|$)|^python3? -m icm_engine\.cli(\s|$)", span):
            continue
        line_index = max(i for i, offset in enumerate(starts) if offset <= match.start())
        where = f"{name}:{prose[min(line_index, len(prose) - 1)][0]}"
        for shown, argv in icm_commands_in_shell(span):
            found.append(ShownCommand(where, shown, tuple(argv), inline=True))
    return found


SHOWN = [command for path in DOC_FILES for command in commands_in(path)]


# --- parsing a shown command with the real parser ---------------------------------------------

@functools.lru_cache(maxsize=None)
def build_parser() -> argparse.ArgumentParser:
    """The `icm` parser, built once (parsing changes nothing in it), with abbreviations refused:
    argparse would take a documented `--seeds` as short for a renamed `--seeds-list`, and the docs
    should spell every flag in full anyway."""
    parser = entry.build_parser()
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.allow_abbrev = False
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def _is_opaque(word: str) -> bool:
    return word.startswith("$") or bool(PLACEHOLDER.match(word))


def _stand_in(action: argparse.Action, word: str) -> str:
    """A value the option accepts, for a value the reader fills in."""
    candidates = [word]
    if action.choices:
        candidates.append(str(next(iter(action.choices))))
    candidates += ["1", "0"]
    if isinstance(action.default, (tuple, list)) and action.default:
        candidates.append(",".join(map(str, action.default)))
    elif action.default not in (None, argparse.SUPPRESS):
        candidates.append(str(action.default))
    for candidate in candidates:
        try:
            value = action.type(candidate) if callable(action.type) else candidate
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            continue
        if not action.choices or value in action.choices or candidate in action.choices:
            return candidate
    return word


def concrete_argv(argv: tuple[str, ...]) -> list[str]:
    """The shown words with each opaque value replaced by a value its option accepts."""
    words = list(argv)
    sub = _subparser(build_parser(), words[0]) if words else None
    if sub is None:
        return words
    out: list[str] = [words[0]]
    action = None  # the option whose values follow
    for word in words[1:]:
        if word.startswith("--") and "=" in word:
            flag, value = word.split("=", 1)
            option = sub._option_string_actions.get(flag)
            out.append(f"{flag}={_stand_in(option, value)}" if option and _is_opaque(value) else word)
            action = None
        elif word.startswith("-") and word in sub._option_string_actions:
            option = sub._option_string_actions[word]
            action = option if option.nargs != 0 else None
            out.append(word)
        else:
            out.append(_stand_in(action, word) if action is not None and _is_opaque(word) else word)
            if action is not None and action.nargs in (None, 1):
                action = None
    return out


def parse_error(argv: list[str]) -> str | None:
    """argparse's complaint about argv, or None when it parses (asking for --help counts as parsing)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as stop:
        if stop.code not in (0, None):
            return stderr.getvalue().strip().splitlines()[-1] if stderr.getvalue().strip() else f"exit {stop.code}"
    return None


def _tolerated(command: ShownCommand, error: str) -> bool:
    """Prose quoting a command may leave out its required arguments; nothing else is forgiven."""
    return command.inline and "the following arguments are required" in error


def test_the_docs_show_icm_commands():
    # the reading of the pages must work: a reader that finds nothing would pass every check below
    files = {command.where.split(":")[0] for command in SHOWN}
    assert len(SHOWN) >= 40 and {"README.md", "docs/cli.md", "docs/serving.md"} <= files, sorted(files)
    assert sum(not command.inline for command in SHOWN) >= 30


@pytest.mark.parametrize("command", SHOWN, ids=str)
def test_shown_command_parses(command: ShownCommand):
    argv = concrete_argv(command.argv)
    error = parse_error(argv)
    if error and not _tolerated(command, error):
        pytest.fail(f"{command.where}: the docs show `{command.text}`, which the icm parser rejects:\n"
                    f"  {error}\n  (parsed as: icm {shlex.join(argv)})", pytrace=False)


# --- the checker itself ------------------------------------------------------------------------

def test_shell_syntax_is_read_like_a_shell():
    text = "ICM_KV_CACHE_MB=8000 .venv/bin/icm bench --n 64 # a comment --bogus && icm runs"
    assert [argv for _, argv in icm_commands_in_shell(text)] == [["bench", "--n", "64"]]  # a comment ends the line
    text = "OMP_NUM_THREADS=1 icm bench --n 64 && icm runs | cat; for S in 0 1; do icm eval --seeds $S, --db \"$(mktemp)\"; done"
    assert [argv for _, argv in icm_commands_in_shell(text)] == [
        ["bench", "--n", "64"], ["runs"], ["eval", "--seeds", "$S,", "--db", "$SUBSTITUTION"]]
    assert icm_commands_in_shell("python -m icm_engine.cli runs --db x.duckdb")[0][1] == ["runs", "--db", "x.duckdb"]
    assert icm_commands_in_shell("icm trust --run N [--out report.html]")[0][1] == ["trust", "--run", "N", "--out", "report.html"]
    assert icm_commands_in_shell("pip install icm_engine") == [] and icm_commands_in_shell("vllm serve x") == []


def test_block_continuations_and_line_numbers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("intro `icm runs --db a.duckdb` and\n`icm eval --search-size\n64`\n\n```bash\n"
                    "icm run --data sample:sentiment_yelp \\\n    --limit 16   # sixteen\n```\n\n```python\nicm = 1\n```\n")
    shown = commands_in(page, root=tmp_path)
    assert [(c.where, c.argv, c.inline) for c in shown] == [
        ("page.md:6", ("run", "--data", "sample:sentiment_yelp", "--limit", "16"), False),
        ("page.md:1", ("runs", "--db", "a.duckdb"), True),
        ("page.md:2", ("eval", "--search-size", "64"), True)]


def test_opaque_values_take_a_value_the_option_accepts():
    assert concrete_argv(("eval", "--seeds", "$S,", "--methods", "$M", "--db", "runs/${M}_s$S.duckdb")) == [
        "eval", "--seeds", "1", "--methods", concrete_argv(("eval", "--methods", "$M"))[2], "--db", "runs/${M}_s$S.duckdb"]
    assert parse_error(concrete_argv(("export", "--run", "RUN_ID", "--format", "FORMAT", "--out", "FILE"))) is None
    assert parse_error(concrete_argv(("run", "--resume", "N", "--steps", "400"))) is None


def test_a_renamed_flag_or_a_wrong_value_is_caught():
    assert "unrecognized arguments: --no-such-flag" in parse_error(["eval", "--no-such-flag", "3"])
    assert "unrecognized arguments: --seed" in parse_error(["eval", "--seed", "3"])  # not short for --seeds
    assert "invalid choice" in parse_error(["export", "--run", "1", "--format", "xlsx", "--out", "x"])
    assert "invalid int value" in parse_error(["run", "--limit", "many"])
    inline = ShownCommand("x.md:1", "icm finalize", ("finalize",), inline=True)
    assert _tolerated(inline, parse_error(["finalize"]))  # prose naming a command, its flags elsewhere
    block = ShownCommand("x.md:1", "icm finalize", ("finalize",), inline=False)
    assert not _tolerated(block, parse_error(["finalize"]))


# --- links between the pages -------------------------------------------------------------------

@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path: Path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    missing = [target for target in re.findall(r"\]\(([^)\s]+)\)", text)
               if not re.match(r"^[a-z]+:|^#", target)
               and not (path.parent / target.split("#")[0]).exists()]
    assert not missing, f"{path.relative_to(ROOT)} links to files that do not exist: {missing}"
