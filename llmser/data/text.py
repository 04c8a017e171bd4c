"""Reading transcripts: UTF-8 text in, clean text out, or a ``TranscriptError`` naming the file.

Text files that decode but are wrong would otherwise reach an LLM prompt as they are:

- **UTF-16 without a byte-order mark** (what some Windows tools write) is valid "UTF-8" to Python,
  one NUL byte after every ASCII letter. A NUL byte never occurs in UTF-8 text, so a file holding one
  is refused with the way to convert it.
- **UTF-8 / UTF-16 with a byte-order mark** are read (the mark says what they are).
- **Not UTF-8** (Latin-1, CP1252 ...) is refused with the byte and position, and the ``iconv`` fix.
- **Control characters** (C0 other than tab/newline, DEL, C1) are replaced by spaces, and the file is
  named in a warning: they carry no words, and tokenizers turn them into odd tokens.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from llmser.utils.logging import get_logger

logger = get_logger(__name__)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class TranscriptError(ValueError):
    """A transcript file that is not usable text; the message names it and the fix."""


def read_transcript(path: str | Path) -> str:
    """The file's text, stripped, with control characters replaced by spaces (see the module docstring)."""
    path = Path(path)
    raw = path.read_bytes()
    text = decode_text(raw, path)
    cleaned, count = _CONTROL.subn(" ", text)
    if count:
        logger.warning("%s: replaced %d control character(s) with spaces; check how the file was made", path, count)
    return re.sub(r"[ \t]{2,}", " ", cleaned).strip() if count else cleaned.strip()


def clean_text(text: str) -> str:
    """``text`` with control characters replaced by spaces (for transcripts passed in as strings)."""
    cleaned, count = _CONTROL.subn(" ", text)
    return re.sub(r"[ \t]{2,}", " ", cleaned).strip() if count else text


def decode_text(raw: bytes, path: str | Path) -> str:
    """Decode UTF-8 (BOM optional) or BOM-marked UTF-16; refuse anything else, naming ``path``."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise TranscriptError(f"transcript {path} is damaged UTF-16 text ({exc.reason}); re-save it as UTF-8") from None
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    if b"\x00" in raw:
        raise TranscriptError(f"transcript {path} holds NUL bytes, so it is UTF-16 without a byte-order mark or not text at all; "
                              f"re-save it as UTF-8 (e.g. iconv -f utf-16le -t utf-8 {Path(path).name})")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TranscriptError(f"transcript {path} is not UTF-8; re-save it as UTF-8 (byte 0x{raw[exc.start]:02x} at "
                              f"position {exc.start} is not UTF-8; e.g. iconv -f latin1 -t utf-8)") from None
