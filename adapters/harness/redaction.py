"""Credentials never leave the harness: URLs are recorded redacted and error text is scrubbed.

A broker URL may carry a user, a password, a token or secret query values. Only
:func:`redact_url`'s form may reach ``TargetResult.info``, warnings, logs or exceptions; a
:class:`Scrubber` removes a URL's secrets from any text a client library produced.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit, urlunsplit

_SECRET_QUERY = re.compile(r"(?i)(password|pass|token|secret|nkey|jwt|creds)=([^&]*)")


def redact_url(url: str) -> str:
    """The URL with user name, password, token and secret query values replaced by ``***``.

    Only the redacted form may reach ``TargetResult.info``, warnings, logs or exceptions.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = _SECRET_QUERY.sub(lambda m: f"{m.group(1)}=***", parts.query)
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """Every secret a URL carries (user info parts and secret query values), for scrubbing."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        found += [userinfo, *userinfo.split(":")]
    found += [m.group(2) for m in _SECRET_QUERY.finditer(parts.query)]
    # Longest first, so "user:pass" is replaced before "user" breaks it apart.
    return sorted({s for s in found if s}, key=len, reverse=True)


class Scrubber:
    """Removes a URL's secrets from any text before it leaves the harness."""

    def __init__(self, url: str) -> None:
        self.redacted_url = redact_url(url)
        self._url = url
        self._secrets = url_secrets(url)

    def __call__(self, text: str) -> str:
        text = text.replace(self._url, self.redacted_url)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class RealBrokerError(RuntimeError):
    """A real-broker run could not start or finish; the message is free of credentials."""
