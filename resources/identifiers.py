"""Values that go into a request path: checked against a pattern, then escaped as one segment.

Identifiers come from the API (org slugs) or from the environment (the Supabase project ref);
either way they are data, never path syntax. A listed slug ``../bootstrap#`` once turned an org
sync into ``POST /admin/bootstrap`` with the root key. Two layers stop that class:
:func:`api_path` percent-escapes every segment (``/``, ``?``, ``#``, ``%``…) and refuses the dot
segments that escaping cannot neutralise (URL normalisation resolves ``..``); and identifiers
are checked against the platform's rule before anything is sent, so a bad one is reported by
name (:func:`display`) instead of reaching a surprising path.
"""

from __future__ import annotations

import re
from urllib.parse import quote

# Org slugs: lowercase letters, digits, '-' and '_', starting with a letter or digit, <= 63.
ORG_SLUG_RULE = "^[a-z0-9][a-z0-9_-]{0,62}$"
_ORG_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# Supabase project refs: lowercase letters and digits (20 on Supabase; 'sandbox' locally).
PROJECT_REF_RULE = "^[a-z0-9][a-z0-9-]{0,62}$"
_PROJECT_REF = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

DISPLAY_LIMIT = 40


class UnsafePathSegment(ValueError):
    """A value that cannot be one path segment (empty, '.', '..', or not encodable)."""


def path_segment(value: str) -> str:
    """``value`` escaped as exactly one path segment; refuses what escaping cannot make safe."""
    if not isinstance(value, str) or value in ("", ".", ".."):
        raise UnsafePathSegment(f"not usable as a path segment: {display(value)}")
    try:
        return quote(value, safe="")
    except UnicodeEncodeError:  # lone surrogates
        raise UnsafePathSegment(f"not usable as a path segment: {display(value)}") from None


def api_path(*parts: str) -> str:
    """``/part/part/...`` with every part escaped by :func:`path_segment`.

    Literal parts of a route ("admin", "orgs") pass through unchanged, so callers write
    ``api_path("admin", "orgs", slug, "sync")`` and never paste a value into an f-string.
    """
    return "/" + "/".join(path_segment(p) for p in parts)


def is_org_slug(value: object) -> bool:
    return isinstance(value, str) and _ORG_SLUG.fullmatch(value) is not None


def is_project_ref(value: object) -> bool:
    return isinstance(value, str) and _PROJECT_REF.fullmatch(value) is not None


def display(value: object, limit: int = DISPLAY_LIMIT) -> str:
    """A safe one-line name for an untrusted value in a message, log line or Markdown table.

    ``ascii()`` escapes control characters, NUL and every non-ASCII character (no bidi tricks,
    no new lines); '|' is escaped too so a Markdown table keeps its columns; long values are cut
    with their length noted.
    """
    text = value if isinstance(value, str) else repr(value)
    shown = ascii(text[:limit]).replace("|", "\\x7c")
    if len(text) > limit:
        shown += f"... ({len(text)} chars)"
    return shown
