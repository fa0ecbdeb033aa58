"""Who may talk to the server: loopback binds, the access token, and the limit on failed attempts.

- A loopback bind (127.0.0.0/8, ::1, `localhost`) needs no token: only processes on this machine reach it. Every
  other bind needs one; `flx serve` generates it on the first public start (`secrets.token_urlsafe(32)`), stores
  it in `<home>/server-token` (0600, atomic write) and prints it once.
- Tokens are compared with `hmac.compare_digest` (constant time). Failed attempts are counted per client address:
  after `max_failures` in `window_s` seconds that address gets 429 with `Retry-After` until the window has passed,
  whether or not its next token is right (a guesser learns nothing while locked out).
"""

from __future__ import annotations

import collections
import hmac
import ipaddress
import math
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from engine._core.errors import InputError

from .errors import RateLimited, Unauthorized

TOKEN_FILE = "server-token"
MIN_TOKEN_LEN = 24
MAX_TOKEN_LEN = 512
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (also bracketed) and `localhost`; every other name or address is public."""
    h = (host or "").strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def token_path(home: str | os.PathLike) -> Path:
    return Path(home) / TOKEN_FILE


def _check_token_text(text: str, path: Path) -> str:
    token = text.strip()
    if not (MIN_TOKEN_LEN <= len(token) <= MAX_TOKEN_LEN) or not token.isascii() or not token.isprintable():
        raise InputError(
            f"token file {path} does not hold a usable token ({MIN_TOKEN_LEN}-{MAX_TOKEN_LEN} printable ASCII "
            "characters): delete it and start the server again to generate a new one"
        )
    if any(c.isspace() for c in token):
        raise InputError(f"token file {path} holds a token with spaces: delete it to generate a new one")
    return token


def read_token(home: str | os.PathLike) -> str | None:
    """The stored token, or None when there is no token file. A token file that others can read, that is not a
    regular file, or that holds no usable token is refused (one line naming the fix)."""
    path = token_path(home)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"token file {path} is not a regular file: remove it and start the server again")
    if os.name == "posix" and st.st_mode & 0o077:
        raise InputError(
            f"token file {path} can be read by other users (mode {stat.S_IMODE(st.st_mode):03o}): "
            f"run `chmod 600 {path}`"
        )
    if st.st_size > MAX_TOKEN_LEN + 2:
        raise InputError(f"token file {path} is {st.st_size} bytes: delete it to generate a new token")
    try:
        text = path.read_text("ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read token file {path} ({e}): delete it to generate a new token") from None
    return _check_token_text(text, path)


def write_new_token(home: str | os.PathLike) -> str:
    """Generate a token and store it in `<home>/server-token` with 0600 permissions (atomic; set before the token
    is written, so it is never readable by others, even for a moment)."""
    from engine._core.atomic import atomic_path

    token = secrets.token_urlsafe(32)
    with atomic_path(token_path(home)) as tmp:
        os.chmod(tmp, 0o600)
        tmp.write_text(token + "\n", "ascii")
    return token


def ensure_token(home: str | os.PathLike) -> tuple[str, bool]:
    """(token, created): the stored token, or a new one when there is none."""
    token = read_token(home)
    if token is not None:
        return token, False
    return write_new_token(home), True


class FailureLimiter:
    """Failed attempts per client address in a sliding window; thread-safe and bounded in memory.

    Args:
        max_failures (`int`, *optional*, defaults to 10): failures allowed in `window_s` before lockout.
        window_s (`float`, *optional*, defaults to 60): the window (and the longest lockout) in seconds.
        max_clients (`int`, *optional*, defaults to 10000): addresses tracked at once (the oldest are dropped).
        clock (`Callable[[], float]`, *optional*): monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        max_failures: int = 10,
        window_s: float = 60.0,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_failures < 1 or window_s <= 0:
            raise InputError("rate limit: allow at least 1 failure in a window longer than 0 s")
        self.max_failures = int(max_failures)
        self.window_s = float(window_s)
        self.max_clients = int(max_clients)
        self._clock = clock
        self._fails: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> collections.deque[float] | None:
        q = self._fails.get(client)
        if q is None:
            return None
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._fails[client]
            return None
        return q

    def check(self, client: str) -> None:
        """Raise `RateLimited` while `client` is locked out."""
        with self._lock:
            now = self._clock()
            q = self._recent(client, now)
            if q is not None and len(q) >= self.max_failures:
                wait = math.ceil(q[0] + self.window_s - now)
                raise RateLimited(
                    f"too many failed token attempts from {client}: wait {max(1, wait)} s, then send the right token",
                    retry_after=wait,
                )

    def fail(self, client: str) -> None:
        with self._lock:
            now = self._clock()
            q = self._recent(client, now)
            if q is None:
                q = self._fails[client] = collections.deque(maxlen=self.max_failures)
            q.append(now)
            self._fails.move_to_end(client)
            while len(self._fails) > self.max_clients:
                self._fails.popitem(last=False)

    def reset(self, client: str) -> None:
        with self._lock:
            self._fails.pop(client, None)


class TokenGuard:
    """Checks a presented token (constant time) and counts failures. `token=None`: no token needed (loopback)."""

    def __init__(self, token: str | None, limiter: FailureLimiter | None = None):
        self.token = token
        self.limiter = limiter or FailureLimiter()
        self._token_bytes = token.encode("utf-8") if token is not None else None

    @property
    def required(self) -> bool:
        return self.token is not None

    def matches(self, presented: str | None) -> bool:
        if self._token_bytes is None:
            return True
        if not isinstance(presented, str) or len(presented) > MAX_TOKEN_LEN:
            return False
        return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self._token_bytes)

    def authorize(self, presented: str | None, client: str) -> None:
        """Pass, or raise `RateLimited` (locked out) / `Unauthorized` (missing or wrong token, counted)."""
        if self._token_bytes is None:
            return
        self.limiter.check(client)
        if self.matches(presented):
            return
        self.limiter.fail(client)
        what = "missing" if not presented else "wrong"
        raise Unauthorized(
            f"{what} access token: send `Authorization: Bearer <token>` or sign in on the page "
            "(the token is in <home>/server-token on the server)"
        )


__all__ = [
    "TOKEN_FILE",
    "FailureLimiter",
    "TokenGuard",
    "ensure_token",
    "is_loopback",
    "read_token",
    "token_path",
    "write_new_token",
]
