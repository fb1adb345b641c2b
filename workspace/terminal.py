"""What DeepRoom prints stays text: names from files and rooms cannot drive the terminal.

A model file's layer names, a recording's header, a room's titles and an error message that
quotes any of them reach the terminal through `print`. A name holding ESC sequences could clear
the screen, retitle the window, hide text or fake a prompt; bidirectional overrides could show a
name reversed. `printable(text)` writes such characters as visible escapes (`\\x1b`, `\\u202e`);
`main` (deeproom.cli) routes stdout and stderr through `PrintableStream` for every command.
Newlines, tabs and carriage returns (progress bars) pass.
"""

from __future__ import annotations

import re
from typing import Any, TextIO

_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group(0))
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: str) -> str:
    """`text` with terminal control and direction-override characters written as escapes."""
    return _UNSAFE.sub(_escape, text)


class PrintableStream:
    """A text stream that passes what is written through `printable`; everything else (flush,
    isatty, fileno, buffer, encoding) is the wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(printable(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)
