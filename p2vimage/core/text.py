"""Text from outside (a guest's serial console, a remote command) made safe to store in
JSON and XML reports and to print as one line: terminal escape sequences dropped, other
control characters dropped, what XML 1.0 cannot hold dropped."""

from __future__ import annotations

import re

# CSI (ESC [ … final), OSC (ESC ] … BEL or ESC \), charset selections (ESC ( B), and the
# two-character escapes (ESC 7 save cursor, ESC c reset, ESC = …).
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
                      r"|\x1b[()*+][0-9A-Za-z]|\x1b[ -/]*[0-~]|\x9b[0-?]*[ -/]*[@-~]")
# C0 controls but tab and newline, DEL, C1 controls, and what XML 1.0 forbids.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def printable(text: str) -> str:
    """``text`` without escape sequences and control characters (tabs, newlines kept)."""
    return _UNSAFE.sub("", _ESCAPES.sub("", text.replace("\r\n", "\n")))
