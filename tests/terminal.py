"""Run a command on a pseudo-terminal and read what a person would see.

``run_on_pty`` starts the command with stdin, stdout and stderr on the slave side of a pty of
a given size (so ``isatty()`` is true and rich draws what it draws for a person), reads the
master side until the process exits, and returns the raw bytes, the text with terminal
escapes removed, and the exit code. ``interrupt_after`` sends Ctrl-C (SIGINT to the
process group, as a terminal does) once a given text has appeared on the screen.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

#: CSI sequences (colours, cursor moves, erase), OSC sequences (titles, links), and the
#: two-character escapes rich and readline use.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[=>()][0-9A-Za-z]?")
_SGR_COLOUR = re.compile(r"\x1b\[([0-9;]*)m")

BIN = Path(sys.executable).parent


@dataclass
class Screen:
    """What a run on a terminal showed."""

    raw: bytes
    returncode: int

    columns: int = 80
    rows: int = 200

    @property
    def text(self) -> str:
        """The screen as a person sees it when the command has ended: the output played
        through a terminal emulator (pyte), so erased spinners and redrawn live tables
        show as they finally stand."""
        import pyte

        screen = pyte.Screen(self.columns, self.rows)
        stream = pyte.ByteStream(screen)
        stream.feed(self.raw.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n"))
        lines = [line.rstrip() for line in screen.display]
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines)

    @property
    def stream_text(self) -> str:
        """Everything printed, escapes removed (also what was later erased or redrawn)."""
        return _ESCAPES.sub("", self.raw.decode("utf-8", "replace")).replace("\r", "")

    @property
    def has_colour(self) -> bool:
        """Whether any escape sets a colour (bold and dim are styles, which NO_COLOR allows)."""
        for match in _SGR_COLOUR.finditer(self.raw.decode("utf-8", "replace")):
            params = [int(p) for p in match.group(1).split(";") if p.isdigit()]
            if any(30 <= p <= 49 or 90 <= p <= 107 for p in params):
                return True
        return False

    def widest_line(self) -> int:
        return max((len(line) for line in self.text.splitlines()), default=0)


def run_on_pty(args: list[str], *, env: dict[str, str], cwd: Path, columns: int = 80,
               rows: int = 200, timeout: float = 120.0, interrupt_after: str | None = None,
               interrupt_delay: float = 0.0) -> Screen:
    """Run ``args`` on a new pty of ``columns`` x ``rows`` and return what it showed.

    Args:
        interrupt_after: once this text has been printed, send SIGINT to the command's
            process group (what Ctrl-C does), ``interrupt_delay`` seconds later.

    Raises:
        TimeoutError: the command did not exit within ``timeout`` seconds (it is killed).
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    # The pty's size is the truth: COLUMNS and LINES say the same, whatever ``env`` had.
    full_env = {"TERM": "xterm-256color", **env, "COLUMNS": str(columns), "LINES": str(rows)}
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd,
                            env=full_env, start_new_session=True, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    interrupt_at: float | None = None
    try:
        while True:
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise TimeoutError(f"{args} did not finish in {timeout} s; it showed:\n"
                                   + Screen(b"".join(chunks), -9).stream_text[-2000:])
            if interrupt_after is not None and interrupt_at is None:
                if interrupt_after in Screen(b"".join(chunks), 0).stream_text:
                    interrupt_at = time.monotonic() + interrupt_delay
            if interrupt_at is not None and time.monotonic() >= interrupt_at:
                os.killpg(proc.pid, signal.SIGINT)
                interrupt_at, interrupt_after = float("inf"), None
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the slave side is closed, the command has exited
                    data = b""
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                # Drain what is left without blocking, then stop.
                while select.select([master], [], [], 0.05)[0]:
                    try:
                        data = os.read(master, 65536)
                    except OSError:
                        data = b""
                    if not data:
                        break
                    chunks.append(data)
                break
    finally:
        os.close(master)
    return Screen(b"".join(chunks), proc.wait(timeout=30), columns, rows)
