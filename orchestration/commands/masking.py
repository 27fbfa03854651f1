"""Secret masking over a whole output *stream*, not per read.

Why a stream masker: output arrives in reads of arbitrary size (a pipe hands over whatever is
there), so a secret can straddle two reads — masking each read alone left 14 of a 19-character
secret in the run log. ``StreamMasker`` holds back only the end of what it has seen that could
still be the start of a secret (at most ``len(longest secret) - 1`` characters, or a short secret
waiting for the character that decides whether it is a whole token), so everything it emits is
final and the concatenation of its outputs is the same as masking the whole text at once.

What is masked: every character covered by any occurrence of any secret, so overlapping secrets
are masked whole whatever their order; overlapping occurrences become one ``****``, each of two
adjacent ones its own.

- Secrets of ``MIN_ANYWHERE`` (4) characters or more are masked wherever they occur.
- Shorter secrets (1-3 characters) are masked only as a whole token (not preceded or followed by a
  letter, digit or ``_``): masking every ``a`` of the output for a 1-character secret would make
  the output unreadable while protecting nothing (a value that short is guessable), but a short
  value printed on its own (``PIN=123``) is still hidden.
- When the stream ends (EOF, or a command killed mid-line) a trailing *partial* secret of at least
  ``MIN_ANYWHERE`` characters is masked too: it may be a secret cut short by the kill.

Bytes first, then text: ``MaskedLines`` masks the raw *bytes* (``ByteStreamMasker``) before its
incremental UTF-8 decoder sees them, then the text. On bytes, a secret of ``MIN_ANYWHERE``
characters or more is masked in its UTF-8 encoding and, when it has one, its Latin-1 and cp1252
encodings (a command printing in a legacy encoding; for a secret those cannot encode whole, each
run of 4+ characters they can, as a tool would print it around a ``?``), and a trailing partial
of ``MIN_ANYWHERE`` bytes or more at EOF is masked whatever character it is cut in (decoding a
cut character gives U+FFFD, which no longer matches the secret's text: a text-only check let 9 of
16 characters through). Other encodings (UTF-16, EBCDIC) are not recognised.

Storable and readable, after masking: ``printable`` replaces every C0 control character except
tab and newline (a carriage return only when it is not the ``\\r`` of a ``\\r\\n``), DEL, and a
lone surrogate by a visible escape (``\\x00``, ``\\x1b``; a surrogate-escaped byte as ``\\xNN``, any
other as U+FFFD). PostgreSQL text cannot hold NUL (a ``find -print0`` left the run stuck
``running``), and ESC sequences would drive the terminal of whoever reads the log. Invalid UTF-8
is already U+FFFD from the decoder. It runs on masked text: a secret is masked before any of its
characters is escaped, and an escape only ever replaces one character, so it cannot split one.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable

MASK = "****"
MIN_ANYWHERE = 4  # shorter secrets are masked as whole tokens only (see the module docstring)
_WORD = re.compile(r"\w")


def _is_word(ch: str) -> bool:
    return bool(ch) and _WORD.match(ch) is not None


class _Secrets:
    """The distinct secret values of one command run, with one overlapping-match regex each."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.values = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.longest = len(self.values[0]) if self.values else 0
        self.anywhere = [s for s in self.values if len(s) >= MIN_ANYWHERE]
        self.tokens = [  # overlapping matches (lookahead), each a whole token
            re.compile(rf"(?=(?<!\w)({re.escape(s)})(?!\w))")
            for s in self.values
            if len(s) < MIN_ANYWHERE
        ]

    def spans(self, text: str, start: int = 0) -> list[tuple[int, int]]:
        """Merged [start, end) spans of every (overlapping) occurrence in ``text[start:]``.

        ``text[:start]`` is context only: it decides whether a short secret is a whole token.
        """
        found = [
            (m.start(1), m.end(1)) for pattern in self.tokens for m in pattern.finditer(text, start)
        ]
        for s in self.anywhere:  # str.find: far faster than a regex on 64 KiB chunks
            i = text.find(s, start)
            while i >= 0:
                found.append((i, i + len(s)))
                i = text.find(s, i + 1)
        return _merge(found)

    def pending_start(self, text: str, start: int) -> int:
        """Earliest index from which ``text`` could still turn into a secret once more arrives.

        A suffix that is a proper prefix of a secret may complete it; a suffix equal to a short
        secret waits for the next character (a letter would make it part of a longer word).
        """
        first = max(start, len(text) - self.longest)
        for i in range(first, len(text)):
            rest = text[i:]
            for s in self.values:
                waits = len(rest) < len(s) or len(rest) == len(s) < MIN_ANYWHERE
                if waits and s.startswith(rest):
                    return i
        return len(text)

    def partial_tail(self, text: str, start: int) -> int:
        """Start of a trailing partial secret (>= MIN_ANYWHERE characters), else ``len(text)``."""
        for i in range(max(start, len(text) - self.longest), len(text) - MIN_ANYWHERE + 1):
            rest = text[i:]
            if any(len(s) > len(rest) and s.startswith(rest) for s in self.values):
                return i
        return len(text)


def _render(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> str:
    """``text[start:end]`` with every span (all inside it) replaced by MASK."""
    out, pos = [], start
    for a, b in spans:
        out.append(text[pos:a])
        out.append(MASK)
        pos = b
    out.append(text[pos:end])
    return "".join(out)


class StreamMasker:
    """``feed(text)`` returns the masked text that is final so far; ``flush()`` the rest at EOF."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = _Secrets(secrets)
        self._buf = ""
        self._before = ""  # the last character already emitted: context for short secrets

    def feed(self, text: str) -> str:
        if not self._secrets.values:
            return text
        self._buf += text
        buf = self._before + self._buf
        ctx = len(self._before)
        spans = self._secrets.spans(buf, ctx)
        cut = self._secrets.pending_start(buf, ctx)
        for a, b in spans:  # never cut through a complete occurrence either
            if a < cut < b:
                cut = a
        done = [(a, b) for a, b in spans if b <= cut]
        out = _render(buf, ctx, cut, done)
        if cut > ctx:
            self._before = buf[cut - 1]
            self._buf = buf[cut:]
        return out

    def flush(self) -> str:
        """The held-back end, masked as the end of the stream (a trailing partial secret too)."""
        if not self._buf:
            return ""
        buf = self._before + self._buf
        ctx = len(self._before)
        spans = self._secrets.spans(buf, ctx)
        cut = self._secrets.partial_tail(buf, ctx)
        if cut < len(buf):
            spans = _merge([*spans, (cut, len(buf))])
        self._buf, self._before = "", ""
        return _render(buf, ctx, len(buf), spans)


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping spans joined (adjacent ones stay apart: one MASK per secret, as a cut between
    two adjacent secrets of a stream would give anyway)."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def mask_text(text: str, secrets: Iterable[str]) -> str:
    """A whole text masked as a complete stream (messages, exceptions)."""
    masker = StreamMasker(secrets)
    return masker.feed(text) + masker.flush()


_LEGACY = ("latin-1", "cp1252")


def _encodable(char: str) -> bool:
    return any(_can_encode(char, codec) for codec in _LEGACY)


def _can_encode(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def _encodings(secret: str) -> set[bytes]:
    """The byte forms of ``secret`` a command may print: UTF-8, and Latin-1/cp1252 if it has them.

    A secret with characters neither legacy codec has (an emoji, a CJK character) comes out of a
    legacy-encoding tool mangled (``?``, a transliteration), so each run of ``MIN_ANYWHERE`` or
    more characters between those is a form too, in every encoding.
    """
    texts = {secret}
    if not all(_encodable(c) for c in secret):
        run: list[str] = []
        for char in [*secret, "\uffff"]:  # U+FFFF: encodable by neither, ends the last run
            if _encodable(char):
                run.append(char)
                continue
            if len(run) >= MIN_ANYWHERE:
                texts.add("".join(run))
            run = []
    forms = set()
    for text in texts:
        forms.add(text.encode("utf-8"))
        forms.update(text.encode(codec) for codec in _LEGACY if _can_encode(text, codec))
    return forms


class ByteStreamMasker:
    """``StreamMasker`` for raw bytes, for the secrets masked anywhere (>= ``MIN_ANYWHERE`` chars).

    Every byte form of each secret (``_encodings``) is masked wherever it occurs; a suffix that may
    still become one is held back; at EOF a trailing proper prefix of ``MIN_ANYWHERE`` bytes or
    more of any form is masked, even if it ends inside a multi-byte character.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        forms = {f for s in set(secrets) if len(s) >= MIN_ANYWHERE for f in _encodings(s)}
        self._forms = sorted(forms, key=len, reverse=True)
        self._longest = len(self._forms[0]) if self._forms else 0
        self._buf = b""

    def _spans(self, data: bytes) -> list[tuple[int, int]]:
        found = []
        for form in self._forms:
            i = data.find(form)
            while i >= 0:
                found.append((i, i + len(form)))
                i = data.find(form, i + 1)
        return _merge(found)

    def _prefix_start(self, data: bytes, shortest: int) -> int:
        """Earliest i with ``data[i:]`` a proper prefix of a form, at least ``shortest`` long."""
        for i in range(max(0, len(data) - self._longest + 1), len(data) - shortest + 1):
            rest = data[i:]
            if any(len(f) > len(rest) and f.startswith(rest) for f in self._forms):
                return i
        return len(data)

    def feed(self, raw: bytes) -> bytes:
        if not self._forms:
            return raw
        data = self._buf + raw
        spans = self._spans(data)
        cut = self._prefix_start(data, 1)
        for a, b in spans:  # never cut through a complete occurrence
            if a < cut < b:
                cut = a
        self._buf = data[cut:]
        return _render_bytes(data, cut, [(a, b) for a, b in spans if b <= cut])

    def flush(self) -> bytes:
        data, self._buf = self._buf, b""
        spans = self._spans(data)
        tail = self._prefix_start(data, MIN_ANYWHERE)
        if tail < len(data):
            spans = _merge([*spans, (tail, len(data))])
        return _render_bytes(data, len(data), spans)


def _render_bytes(data: bytes, end: int, spans: list[tuple[int, int]]) -> bytes:
    out, pos = [], 0
    for a, b in spans:
        out += [data[pos:a], MASK.encode()]
        pos = b
    out.append(data[pos:end])
    return b"".join(out)


# C0 controls but tab and newline, a CR not ending a line, DEL, lone surrogates (see the docstring)
_UNPRINTABLE = re.compile("\r(?!\n)|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|[\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte kept by errors="surrogateescape"
        return f"\\x{code - 0xDC00:02x}"
    return "\ufffd" if code >= 0xD800 else f"\\x{code:02x}"


def printable(text: str) -> str:
    """``text`` with control characters, DEL and lone surrogates escaped (storable in PostgreSQL,
    safe on a terminal, encodable as UTF-8). Idempotent: an escape is plain ASCII."""
    return _UNPRINTABLE.sub(_escape, text)


class MaskedLines:
    """One output stream: bytes in, masked lines out (each ending in ``\\n`` except the last),
    made ``printable`` after masking.

    A line longer than ``max_line`` characters is handed on in pieces of ``max_line`` so that a
    command printing without newlines never grows memory or one log line without bound; the
    pieces are already masked, so a cut never reveals anything.
    """

    def __init__(self, secrets: Iterable[str], max_line: int) -> None:
        secrets = list(secrets)
        self._bytes = ByteStreamMasker(secrets)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._masker = StreamMasker(secrets)
        self._line = ""
        self.max_line = max_line

    def feed(self, raw: bytes) -> list[str]:
        return self._split(self._masker.feed(self._decoder.decode(self._bytes.feed(raw))))

    def close(self) -> list[str]:
        last = self._decoder.decode(self._bytes.flush(), final=True)
        text = self._masker.feed(last) + self._masker.flush()
        lines = self._split(text)
        if self._line:
            lines.append(printable(self._line))
            self._line = ""
        return lines

    def _split(self, text: str) -> list[str]:
        data = self._line + text
        lines, pos = [], 0
        while True:  # positions, not slices of the rest: linear in the chunk however many lines
            nl = data.find("\n", pos, pos + self.max_line)
            if nl >= 0:
                end = nl + 1
            elif len(data) - pos >= self.max_line:
                end = pos + self.max_line
            else:
                break
            lines.append(data[pos:end])
            pos = end
        self._line = data[pos:]
        return [printable(line) for line in lines]
