"""The hand-written man pages in debian/ keep up with the commands.

For each command, every long option its ``--help`` shows must appear in its
man page, so that adding an option without documenting it fails here, and
README, ``--help`` and man page stay in step.  troff writes a hyphen in an
option as ``\\-``, so the page is unescaped before searching.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

DEBIAN = Path(__file__).resolve().parent.parent / "debian"

COMMANDS = {
    "etcd-mirror": "main",
    "etcd-mirror-verify": "verify_main",
    "etcd-mirror-freshness": "freshness_main",
    "etcd-mirror-wait": "wait_main",
    "etcd-mirror-switchover": "switchover_main",
}


def help_text(prog: str, function: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c",
         f"from etcdmirror.cli import {function}; {function}(prog_name={prog!r})", "--help"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return result.stdout


def long_options(help_output: str) -> set:
    """Long options from the option column of click's --help.

    Only lines that start an option entry count ("  -d, --debug  ...",
    "  --port INTEGER ..."): descriptions mention other options and may wrap
    a name ("--heartbeat-\\n interval").
    """
    found = set()
    for line in help_output.splitlines():
        entry = re.match(r"^  (-\w, )?(--[a-z0-9][a-z0-9-]*)", line)
        if entry:
            found.add(entry.group(2))
    return found


def unescape_troff(text: str) -> str:
    text = re.sub(r"\\f[BIRP]|\\f\(..|\\&|\\%", "", text)  # fonts, zero-width marks
    return text.replace("\\-", "-").replace("\\(hy", "-").replace("\\e", "\\")


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_every_long_option_is_in_the_man_page(prog):
    options = long_options(help_text(prog, COMMANDS[prog]))
    assert {"--help", "--version"} <= options, "could not read the options from --help"
    page = unescape_troff((DEBIAN / f"{prog}.1").read_text(encoding="utf-8"))
    documented = set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", page))
    missing = sorted(options - documented)
    assert not missing, f"debian/{prog}.1 does not document {', '.join(missing)}"


def test_man_pages_name_their_command():
    for prog in COMMANDS:
        page = (DEBIAN / f"{prog}.1").read_text(encoding="utf-8")
        assert re.search(r"^\.TH %s 1 " % re.escape(prog.upper()), page, re.M), prog
        assert re.search(r"^%s \\- " % re.escape(prog), page, re.M), prog
