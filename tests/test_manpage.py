"""man/mogstored.1: documents every option and config key the code accepts,
and renders without a warning through man-db and groff."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from mogstored.config import cli, file

PAGE = Path(__file__).resolve().parent.parent / "man" / "mogstored.1"


def section(name: str) -> list[str]:
    """The source lines of one ``.SH`` section."""
    lines = PAGE.read_text().splitlines()
    start = lines.index(f".SH {name}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith(".SH ")), len(lines))
    return lines[start:end]


def tags(name: str) -> list[list[str]]:
    """The words of each ``.TP`` tag of a section, escapes and font macros removed."""
    lines = section(name)
    found = []
    for i, line in enumerate(lines[:-1]):
        if line == ".TP":
            tag = re.sub(r"^\.[A-Z]+ ", "", lines[i + 1]).replace("\\-", "-")
            found.append(shlex.split(tag))
    return found


def help_options() -> set[str]:
    text = cli.HELP_TEXT.split("\n", 2)[2]  # past the usage and title lines
    return set(re.findall(r"(?<![\w-])(--[a-z-]+|-[A-Za-z?])(?![a-z])", text))


def test_every_option_is_documented() -> None:
    documented = {m.group(1) for words in tags("OPTIONS") for w in words
                  if (m := re.fullmatch(r"(--?[\w?-]+)=?", w))}
    from_code = help_options() | {f"--{o}" for o in cli.LONG_OPTIONS} | {f"-{s}" for s in cli.SHORT_OPTIONS}
    assert len(help_options()) >= 15  # the parse above found the help text's options
    assert from_code - documented == set()
    assert documented - from_code == set()  # nor one that does not exist


def test_every_config_key_is_documented() -> None:
    documented = {w for words in tags("CONFIG FILES") for w in words if re.fullmatch(r"\w+", w)}
    assert file._KNOWN_KEYS - documented == set()
    assert documented - file._KNOWN_KEYS == set()


def test_renders_without_warnings() -> None:
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    man = subprocess.run(["man", "--warnings", "-l", str(PAGE)], capture_output=True, text=True, env=env,
                         timeout=60, check=False)
    assert (man.returncode, man.stderr) == (0, "")
    assert "mogstored - MogileFS storage node" in man.stdout
    assert max(len(line) for line in man.stdout.splitlines()) <= 80
    groff = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(PAGE)], capture_output=True, text=True,
                           timeout=60, check=False)
    assert (groff.returncode, groff.stderr) == (0, "")
