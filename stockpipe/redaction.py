"""Passwords in store and Redis URLs: kept out of every message, and passed on correctly encoded.

Users paste DSNs with an unencoded `@`, `/`, `:` or `#` in the password. Parsers that split the
authority at the first `@` then take part of the password for the host name and print it in their
errors. So the userinfo is everything between `scheme://` and the LAST `@` before the path's host
part, and both redaction and encoding work on that split.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)(.*)$", re.DOTALL)


def _split(url: str) -> tuple[str, str | None, str] | None:
    """(scheme://, userinfo or None, rest) with userinfo ending at the last `@` of the URL."""
    match = _SCHEME.match(url)
    if not match:
        return None
    scheme, remainder = match.groups()
    if "@" not in remainder:
        return scheme, None, remainder
    userinfo, _, rest = remainder.rpartition("@")
    return scheme, userinfo, rest


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***` (`user:***@host`); a URL that cannot be split
    is shown as its scheme only, since it may be all secret."""
    parts = _split(url)
    if parts is None:
        return "***" if url else url
    scheme, userinfo, rest = parts
    if userinfo is None:
        return url
    user = userinfo.split(":", 1)[0] if ":" in userinfo else userinfo
    return f"{scheme}{user}:***@{rest}" if ":" in userinfo else f"{scheme}{user}@{rest}"


def password_of(url: str) -> str | None:
    parts = _split(url)
    if parts is None or parts[1] is None or ":" not in parts[1]:
        return None
    return unquote(parts[1].split(":", 1)[1]) or None


def encode_userinfo(url: str) -> str:
    """The URL with user and password percent-encoded (already encoded parts stay as they are), so a
    driver's URL parser sees the intended host."""
    parts = _split(url)
    if parts is None or parts[1] is None:
        return url
    scheme, userinfo, rest = parts
    user, colon, password = userinfo.partition(":")
    encoded = quote(unquote(user), safe="")
    if colon:
        encoded += ":" + quote(unquote(password), safe="")
    return f"{scheme}{encoded}@{rest}"


def scrub(text: str, *urls: str) -> str:
    """`text` with every URL's password (raw and encoded) replaced by `***`: for driver errors that
    may quote the DSN back."""
    for url in urls:
        secret = password_of(url) if url else None
        if not secret:
            continue
        for form in {secret, quote(secret, safe=""), url.split("://", 1)[-1].rpartition("@")[0].partition(":")[2]}:
            if form:
                text = text.replace(form, "***")
    return text
