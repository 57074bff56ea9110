"""The console's action guard: actions off unless enabled, a per-start token, same-origin only.

Every POST goes through :meth:`ActionGuard.refusal`, which returns why the
request is refused (``None`` = allowed):

1. the console runs read-only (started without ``--allow-actions``);
2. the request comes from another origin: its ``Origin`` header (sent by
   browsers on every POST) does not name this console, or, without one,
   ``Sec-Fetch-Site`` says ``cross-site`` / ``same-site``, or the ``Referer``
   names another origin;
3. the ``token`` form field is missing or wrong (compared in constant time
   with :func:`hmac.compare_digest`).

Host headers are checked for every request by Starlette's
``TrustedHostMiddleware`` (see ``app.create_app``), so a page of another site
cannot read the console through DNS rebinding either.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

__all__ = ["ActionGuard", "new_token"]


def new_token() -> str:
    """A fresh random token (32 URL-safe characters, 192 bits) for one console start."""
    return secrets.token_urlsafe(24)


class ActionGuard:
    """Decides whether one POST may run an action.

    Parameters
    ----------
    token
        The per-start token; ``None`` = actions are off (read-only console).
    """

    def __init__(self, token: str | None) -> None:
        if token is not None and (not isinstance(token, str) or len(token) < 16):
            raise ValueError("the action token must be a string of at least 16 characters "
                             "(use mqlite.ui.security.new_token())")
        self._token = token

    @property
    def enabled(self) -> bool:
        """Whether actions are on at all."""
        return self._token is not None

    def refusal(self, *, scheme: str, host: str, headers: dict[str, str],
                given: str | None) -> str | None:
        """Why this request may not act, or ``None`` when it may.

        Parameters
        ----------
        scheme, host
            This console's URL scheme and ``Host`` header (what the browser used).
        headers
            The request headers, names in lower case.
        given
            The ``token`` form field (``None`` when absent).
        """
        if self._token is None:
            return ("this console is read-only: restart it with `mqlite ui DIR "
                    "--allow-actions` to enable actions")
        here = f"{scheme}://{host}".lower()
        origin = headers.get("origin")
        if origin is not None:
            if origin.lower() != here:
                return f"cross-origin request refused (Origin {origin!r} is not {here!r})"
        else:
            site = headers.get("sec-fetch-site")
            if site is not None and site not in ("same-origin", "none"):
                return f"cross-site request refused (Sec-Fetch-Site: {site})"
            ref = headers.get("referer")
            if ref:
                parts = urlsplit(ref)
                if f"{parts.scheme}://{parts.netloc}".lower() != here:
                    return "cross-origin request refused (Referer names another site)"
        if not given:
            return ("no action token: paste the token `mqlite ui` printed on its terminal "
                    "into the token field")
        if not hmac.compare_digest(given.encode(), self._token.encode()):
            return "wrong action token: use the one `mqlite ui` printed when it started"
        return None
