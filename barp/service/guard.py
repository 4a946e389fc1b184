"""What stands between the network and the routing service: API keys, the request body limit and path scrubbing.

- :class:`KeyRing`: the server's API keys (from ``BARP_API_KEY`` / ``BARP_FEEDBACK_KEY`` and key files), each with a
  public id (its name, or ``sha256:`` and the first 8 hex characters of its SHA-256) that the log records instead of
  the key. A presented key is compared with every key in constant time (:func:`hmac.compare_digest` of SHA-256
  digests, no early exit).
- :class:`Guard`: pure ASGI middleware that, before the app reads anything, answers 401 for a missing or wrong key
  (every path but ``/health``), 403 for a key that may not use the path (a routing key posting feedback when grader
  keys are set), and 413 for a body over the limit: by its ``Content-Length`` before reading a byte, and, for a
  chunked body, as soon as the bytes read pass the limit.
- :func:`scrub_paths`: error messages name files by their name only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException

from barp.errors import ConfigError

#: Environment variable holding one API key (routing and feedback, or routing only when grader keys are set).
API_KEY_ENV = "BARP_API_KEY"
#: Environment variable holding one grader key (the only keys that may post /feedback and reset the controller).
FEEDBACK_KEY_ENV = "BARP_FEEDBACK_KEY"
#: Shortest key accepted (characters).
MIN_KEY_CHARS = 16
#: Paths that never need a key.
OPEN_PATHS = frozenset({"/health"})
#: Paths that write outcomes: only grader keys may use them when grader keys are set.
FEEDBACK_PATHS = frozenset({"/feedback", "/budget/reset"})
#: Paths a grader key may use besides :data:`FEEDBACK_PATHS`.
GRADER_READS = frozenset({"/models"})
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_KEY = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without spaces: what an HTTP header carries safely


def key_id(key: str) -> str:
    """The public id of an unnamed key: ``sha256:`` and the first 8 hex characters of its SHA-256."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


@dataclass(frozen=True)
class _Key:
    key_id: str
    digest: bytes
    role: str  # "any" (every path), "route" (all but FEEDBACK_PATHS) or "feedback" (FEEDBACK_PATHS, GRADER_READS)


def _check_key(key: str, where: str) -> None:
    if len(key) < MIN_KEY_CHARS or not _KEY.match(key):
        raise ConfigError(f"{where}: a key must be at least {MIN_KEY_CHARS} printable ASCII characters without spaces "
                          f"(got {len(key)} characters); make one with: python -c 'import secrets; "
                          "print(secrets.token_urlsafe(32))'")


def read_key_file(path: str | os.PathLike, option: str) -> list[tuple[str, str]]:
    """The ``(key id, key)`` pairs of a key file: one key per line, optionally ``name:key``; blank lines and lines
    starting with ``#`` are skipped. Errors name the file and the line, never a key."""
    where = f"{option} {Path(path).name!r}"
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: cannot read the key file ({getattr(err, 'strerror', None) or err})") from None
    out: list[tuple[str, str]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, key = line.partition(":")
        if sep and _NAME.match(name):
            ident = name
        else:
            ident, key = None, line
        _check_key(key, f"{where}, line {lineno}")
        out.append((ident or key_id(key), key))
    if not out:
        raise ConfigError(f"{where}: the key file holds no key (one key per line, optionally name:key)")
    return out


class KeyRing:
    """The server's API keys. Empty: the server is open (every path needs no key).

    Args:
        route_keys: ``(key id, key)`` pairs for routing (and for feedback too, when ``feedback_keys`` is empty).
        feedback_keys: ``(key id, key)`` pairs of graders: when given, only these may post ``/feedback`` and reset the
            budget controller, and they may not route.
    """

    def __init__(self, route_keys: Sequence[tuple[str, str]] = (),
                 feedback_keys: Sequence[tuple[str, str]] = ()) -> None:
        if feedback_keys and not route_keys:
            raise ConfigError(f"grader keys ({FEEDBACK_KEY_ENV} or --feedback_key_file) need routing keys too "
                              f"({API_KEY_ENV} or --api_key_file): otherwise nobody could route")
        role = "route" if feedback_keys else "any"
        self._keys: list[_Key] = []
        seen_ids: set[str] = set()
        seen_digests: set[bytes] = set()
        for pairs, kind in ((route_keys, role), (feedback_keys, "feedback")):
            for ident, key in pairs:
                digest = hashlib.sha256(key.encode("utf-8")).digest()
                if digest in seen_digests:
                    raise ConfigError(f"API keys: the key with id {ident!r} is given twice (or as both a routing and "
                                      "a grader key); give each key once")
                if ident in seen_ids:
                    raise ConfigError(f"API keys: two keys have the id {ident!r}; give each a distinct name")
                seen_ids.add(ident)
                seen_digests.add(digest)
                self._keys.append(_Key(ident, digest, kind))

    @classmethod
    def from_sources(cls, api_key_file: str | None = None, feedback_key_file: str | None = None,
                     environ: dict[str, str] | None = None) -> KeyRing:
        """Keys from ``BARP_API_KEY`` and ``--api_key_file`` (routing), ``BARP_FEEDBACK_KEY`` and
        ``--feedback_key_file`` (graders)."""
        env = os.environ if environ is None else environ
        route: list[tuple[str, str]] = []
        feedback: list[tuple[str, str]] = []
        for variable, into in ((API_KEY_ENV, route), (FEEDBACK_KEY_ENV, feedback)):
            value = env.get(variable, "").strip()
            if value:
                _check_key(value, variable)
                into.append((key_id(value), value))
        if api_key_file:
            route += read_key_file(api_key_file, "--api_key_file")
        if feedback_key_file:
            feedback += read_key_file(feedback_key_file, "--feedback_key_file")
        return cls(route, feedback)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def split(self) -> bool:
        """Whether grader keys are separate from routing keys."""
        return any(k.role == "feedback" for k in self._keys)

    def match(self, presented: str) -> _Key | None:
        """The key equal to ``presented``: every key is compared (constant time each, no early exit)."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


def allowed(role: str, path: str) -> bool:
    """Whether a key of ``role`` may use ``path``."""
    if role == "any":
        return True
    if role == "route":
        return path not in FEEDBACK_PATHS
    return path in FEEDBACK_PATHS or path in GRADER_READS


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback interface (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost, or "" (every interface)


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def presented_key(scope: dict[str, Any]) -> str | None:
    """The key a request presents: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    auth = _header(scope, b"authorization")
    if auth is not None:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = _header(scope, b"x-api-key")
    return key.strip() if key is not None and key.strip() else None


class BodyTooLarge(HTTPException):
    """The request body passed the server's limit (413); raised from ``receive`` while the app reads it."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over this server's limit of {limit} bytes (--max_body_bytes)")


#: ASGI scope key under which :class:`Guard` leaves the id of the request's key (None without keys).
KEY_ID_SCOPE = "barp.key_id"


class Guard:
    """ASGI middleware: keys (401/403) and the body limit (413), checked before the app reads the body.

    Args:
        app: The ASGI app.
        keys: The server's keys (empty: no key needed).
        max_body_bytes: Most bytes of a request body.
    """

    def __init__(self, app, keys: KeyRing, max_body_bytes: int) -> None:
        self.app = app
        self.keys = keys
        self.max_body_bytes = max_body_bytes

    @staticmethod
    async def _answer(send, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        body = json.dumps({"error": message}).encode("utf-8")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *headers]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        scope[KEY_ID_SCOPE] = None
        if self.keys and path not in OPEN_PATHS:
            presented = presented_key(scope)
            challenge = [(b"www-authenticate", b"Bearer")]
            if presented is None:
                await self._answer(send, 401, "this server needs an API key: send 'Authorization: Bearer <key>' or "
                                              "'X-API-Key: <key>'", challenge)
                return
            key = self.keys.match(presented)
            if key is None:
                await self._answer(send, 401, "the API key is not valid", challenge)
                return
            if not allowed(key.role, path):
                what = ("only grader keys (--feedback_key_file) may post feedback or reset the budget"
                        if path in FEEDBACK_PATHS else "a grader key may only post /feedback, /budget/reset and read "
                        "/models")
                await self._answer(send, 403, f"this key may not use {path}: {what}")
                return
            scope[KEY_ID_SCOPE] = key.key_id
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await self._answer(send, 400, f"the Content-Length header {length[:40]!r} is not a byte count")
                return
            if int(length) > self.max_body_bytes:
                await self._answer(send, 413, f"the request body ({int(length)} bytes) is over this server's limit "
                                              f"of {self.max_body_bytes} bytes (--max_body_bytes)")
                return
        limit, seen = self.max_body_bytes, 0

        async def capped_receive():
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, capped_receive, send)


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])(?:~|[A-Za-z]:)?(?:/[^\s'\"/,;()\[\]]+)+/?")


def scrub_paths(message: str) -> str:
    """``message`` with every absolute path (two components or more) replaced by its last component."""
    def name(found: re.Match) -> str:
        text = found.group(0).rstrip("/")
        return text if text.count("/") < 2 else os.path.basename(text)

    return _ABSOLUTE_PATH.sub(name, message)


def public_name(value: str) -> str:
    """A file or folder named by its name only (a model hub id such as ``org/model`` is kept as it is)."""
    text = str(value)
    if os.path.isabs(text) or text.startswith(("~", "./", "../")) or ("/" in text and os.path.exists(text)):
        return Path(text).name
    return text
