"""The shared answer cache: one Redis for a team's checkouts and CI runners.

A judgment made on one machine is then a hit on all of them. It is a :class:`cache.Store` like
the local SQLite file, behind it in lookups and written alongside it, with the same keys (never
an endpoint or a credential) and the same JSON answers, under a key prefix and with an optional
TTL. The ``redis`` client library is an optional extra, imported when the first answer is looked
up, never when the plugin loads.

A cache must not become a reason a run fails or hangs: every request has a socket timeout, and
is never retried, and the first failure is reported once and switches the shared cache off for
the rest of the run (unreachable: reads and writes; full or refusing writes: writes only), which
then goes on with the local cache. A run that must not do that (a CI job that should never pay
twice) marks the shared cache required, and then the failure fails the items that needed it.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PREFIX = "judgeopt:"
TIMEOUT = 2.0  # seconds per request (connect, read, write): a cache answers in milliseconds or not at all
SCHEMES = ("redis", "rediss", "unix")
INSTALL_HINT = "the shared cache needs the redis client: pip install 'pytest-judgeopt[redis]'"

Answer = dict[str, Any]


class SharedCacheError(Exception):
    """The shared cache is required (``--judge-cache-required``) and cannot be used; ``str()`` says why and what to do."""


def url_problem(url: str) -> str | None:
    """What is wrong with a cache URL, or None: checked when pytest starts, before anything runs."""
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        return f"{shown_url(url)} is not a Redis URL: use redis://host:port/db, rediss://host:port/db (TLS) or unix:///path"
    try:
        found = importlib.util.find_spec("redis") is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a module entry set to None
        found = False
    return None if found else INSTALL_HINT


def shown_url(url: str) -> str:
    """The URL without its password, for messages and reports."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username + ':' if parts.username else ':'}***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RedisCache:
    """Answers in Redis under ``prefix`` + cache key, as compact JSON, each with an optional TTL (seconds)."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, ttl: float | None = None, required: bool = False,
                 report: Callable[[str], None] | None = None, timeout: float = TIMEOUT):
        self.url = url
        self.prefix = prefix
        self.ttl = ttl
        self.required = required
        self.report = report or (lambda text: None)
        self.timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()
        self.down: str | None = None  # why the shared cache is off (reads and writes)
        self.full: str | None = None  # why writes are off

    def _redis(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    import redis
                    from redis.backoff import NoBackoff
                    from redis.retry import Retry
                except ImportError:
                    raise SharedCacheError(INSTALL_HINT) from None
                self._client = redis.Redis.from_url(
                    self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                    retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0,
                    client_name="pytest-judgeopt")
            return self._client

    def get(self, key: str) -> Answer | None:
        if self.down:
            self._off(self.down)
            return None
        import redis

        try:
            raw = self._redis().get(self.prefix + key)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError) as exc:
            self._off(self._fail("down", exc))
            return None
        return None if raw is None else json.loads(raw)

    def put_many(self, items: list[tuple[str, Answer]]) -> None:
        reason = self.down or self.full
        if reason:
            self._off(reason)
            return
        import redis

        ttl = None if self.ttl is None else max(1, round(self.ttl))
        try:
            pipe = self._redis().pipeline(transaction=False)
            for key, value in items:
                pipe.set(self.prefix + key, json.dumps(value, ensure_ascii=False, separators=(",", ":")), ex=ttl)
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._off(self._fail("down", exc))
        except redis.ResponseError as exc:  # OOM under maxmemory noeviction, READONLY replica, no permission
            self._off(self._fail("full", exc))

    def _fail(self, kind: str, exc: BaseException) -> str:
        """Switch the shared cache off (or its writes) and report it, once per kind, whichever thread saw it first."""
        detail = " ".join(str(exc).split()) or type(exc).__name__
        detail = detail.split(" of pipeline caused error: ", 1)[-1]  # the server's words, not the pipeline's framing
        with self._lock:
            if kind == "down":
                if self.down:
                    return self.down
                self.down = (f"the shared cache {shown_url(self.url)} cannot be reached ({detail}); this run goes on "
                             "with the local cache only")
                reason = self.down
            else:
                if self.full or self.down:
                    return self.full or self.down or ""
                self.full = (f"the shared cache {shown_url(self.url)} refused to store answers ({detail}); this run "
                             "reads it but stores new answers in the local cache only")
                reason = self.full
        if not self.required:
            self.report(f"{reason}. Fix: check the Redis server (for a full one: its maxmemory and eviction policy), "
                        "or pass --judge-cache-required to fail instead")
        return reason

    def _off(self, reason: str) -> None:
        """Going on without the shared cache: allowed, or (required) an error naming why and what to do."""
        if self.required:
            raise SharedCacheError(f"{reason.split(';')[0]}, and it is required (--judge-cache-required). Fix: check "
                                   "the Redis server and --judge-cache-url, or drop --judge-cache-required to go on "
                                   "with the local cache")

    def keys(self) -> list[str]:
        """Every key under the prefix (for tests and housekeeping; SCAN, never KEYS)."""
        return sorted(k.decode() for k in self._redis().scan_iter(match=self.prefix + "*", count=1000))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
