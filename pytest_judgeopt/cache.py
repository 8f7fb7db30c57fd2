"""A persistent cache of model answers, shared by processes.

SQLite in WAL mode gives what the cache must have for free: pytest-xdist workers read and
write it at once, and a process killed mid-write leaves the last committed state, never a
half-written entry. Entries hold answers and token counts only: no request headers, so no
keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

FILE_NAME = "answers.sqlite"
# The answer cache's modes (--judge-cache): read and write, bypass, ask again and store, read only.
MODES = ("use", "off", "refresh", "replay")
BUSY_TIMEOUT = 60.0  # seconds a writer waits for another process's transaction


def cache_key(request: dict[str, Any]) -> str:
    """Everything that can change an answer, canonically serialised."""
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def enable_wal(db: sqlite3.Connection) -> None:
    """Switch the file to WAL, waiting out other processes doing the same.

    When two processes open a new cache at once (xdist workers starting), sqlite answers
    "database is locked" to the journal-mode change at once, without calling the busy handler,
    so the connection's timeout does not cover it; the mode is persistent, so once set it stays.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError(f"could not switch the cache to WAL mode within {BUSY_TIMEOUT:g} s")
        time.sleep(0.01)


class Cache:
    def __init__(self, directory: str | Path):
        self.path = Path(directory) / FILE_NAME
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
            enable_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS facts (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db = db
        return self._db

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._connect().execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.put_many([(key, value)])

    def put_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """One transaction for many answers: a commit is a disk sync, so batch them."""
        now = time.time()
        rows = [(k, json.dumps(v, ensure_ascii=False), now) for k, v in items]
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT OR REPLACE INTO answers (key, value, created) VALUES (?, ?, ?)", rows)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def fact(self, key: str) -> Any:
        """A fact about a model that costs an import to learn (does litellm know it to take a response schema?),
        kept apart from the answers; None when not known."""
        with self._lock:
            row = self._connect().execute("SELECT value FROM facts WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def remember(self, key: str, value: Any) -> None:
        with self._lock:
            self._connect().execute("INSERT OR REPLACE INTO facts (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def __len__(self) -> int:
        with self._lock:
            return self._connect().execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Fold the write-ahead log into the main file, so a committed cache is one file."""
        with self._lock:
            if self._db is None:
                return
            # another process may hold the database: the last one to close folds the log in
            with contextlib.suppress(sqlite3.OperationalError):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            self._db = None
