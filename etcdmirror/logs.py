"""How the daemon's log lines look: journald priorities under systemd, timestamps elsewhere.

Under systemd, stderr goes to journald, which stamps every line with its own
time and takes a ``<N>`` prefix (syslog priority, systemd.exec(5)
``SyslogLevelPrefix=``) as the line's priority.  So there we write no
timestamp and prefix each line, tracebacks' lines included, with its
priority: ``journalctl -u etcd-mirror@X -p err`` then shows why the mirror
stopped.  systemd tells a service that its stderr is the journal by setting
``$JOURNAL_STREAM`` to that stream's ``device:inode``; anywhere else (a
terminal, a file, a pipe) lines keep their timestamps.
"""

import logging
import os
import sys
from typing import IO, Mapping, Optional

#: syslog priorities by logging level.
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4,
              logging.INFO: 6, logging.DEBUG: 7}

#: --log-level's choices.
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def priority(level: int) -> int:
    """The syslog priority of a logging level (levels between round down)."""
    for threshold in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if level >= threshold:
            return PRIORITIES[threshold]
    return PRIORITIES[logging.DEBUG]


def writes_to_journal(stream: IO[str], environ: Optional[Mapping[str, str]] = None) -> bool:
    """True when ``stream`` is the journal stream systemd handed us."""
    env = os.environ if environ is None else environ
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``, every line of it, no timestamp."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def setup(level: int, stream: Optional[IO[str]] = None,
          environ: Optional[Mapping[str, str]] = None) -> None:
    """Log to ``stream`` (stderr) at ``level``, for journald or for people."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if writes_to_journal(stream, environ)
                         else logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
