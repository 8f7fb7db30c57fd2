"""Where model answers are kept between runs: the key, the modes, the stores and their writer.

A store is anything with ``get``, ``put_many`` and ``close`` (:class:`Store`). Two ship here and in
``redis_cache.py``: the local SQLite file (the working cache of one checkout) and a shared Redis (one
cache for a team's checkouts and CI runners). Answer files beside the specs (``answers.py``) are a
read-only layer in front of both. :class:`Stores` puts the local and the shared store together and
writes behind: answers are queued in memory (and answer lookups at once) and a writer thread commits
them, so a slow disk, a lock held by another pytest-xdist worker or a slow network never stalls the
event loop the model calls run on.

SQLite in WAL mode gives what the local cache must have for free: pytest-xdist workers read and
write it at once, and a process killed mid-write leaves the last committed state, never a
half-written entry. Entries hold answers and token counts only: no request headers, so no keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

FILE_NAME = "answers.sqlite"
# The answer cache's modes (--judge-cache): read and write, bypass, ask again and store, read only.
MODES = ("use", "off", "refresh", "replay")
BUSY_TIMEOUT = 60.0  # seconds a writer waits for another process's transaction
FLUSH_SECONDS = 1.0  # a queued answer is written within this long (a killed process loses at most that much)
FLUSH_BATCH = 64  # or as soon as this many are queued: a commit is a disk sync, so they are batched

Answer = dict[str, Any]  # a reply as plain JSON data (llm.Reply.to_json)


def cache_key(request: dict[str, Any]) -> str:
    """Everything that can change an answer, canonically serialised."""
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Store(Protocol):
    """A place answers are kept, by cache key. Called from worker threads, never from the event loop."""

    def get(self, key: str) -> Answer | None: ...

    def put_many(self, items: list[tuple[str, Answer]]) -> None: ...

    def close(self) -> None: ...


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
    """The local cache: one SQLite file under ``.judgeopt/``.

    Reads and writes use separate connections (each with its own lock), so a writer waiting out
    another process's transaction (up to BUSY_TIMEOUT) never holds up a lookup: in WAL mode a
    reader sees the last commit while a write is pending.
    """

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / FILE_NAME
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)

    def _connect(self) -> sqlite3.Connection:
        """The writing connection (tests trace its statements): it sets WAL mode and makes the table."""
        if self._writer is None:
            db = self._open()
            enable_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS facts (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._writer = db
        return self._writer

    def _read(self) -> sqlite3.Connection:
        """The reading connection: no statement that could wait for a writer (WAL mode is the file's, set by
        the first writer; before any writer made the table, there is nothing to read)."""
        if self._reader is None:
            self._reader = self._open()
        return self._reader

    def get(self, key: str) -> Answer | None:
        with self._read_lock:
            try:
                row = self._read().execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return None
                raise
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: Answer) -> None:
        self.put_many([(key, value)])

    def put_many(self, items: list[tuple[str, Answer]]) -> None:
        """One transaction for many answers: a commit is a disk sync, so batch them."""
        now = time.time()
        rows = [(k, json.dumps(v, ensure_ascii=False), now) for k, v in items]
        with self._write_lock:
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
        with self._read_lock:
            try:
                row = self._read().execute("SELECT value FROM facts WHERE key = ?", (key,)).fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return None
                raise
        return json.loads(row[0]) if row else None

    def remember(self, key: str, value: Any) -> None:
        with self._write_lock:
            self._connect().execute("INSERT OR REPLACE INTO facts (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def __len__(self) -> int:
        with self._read_lock:
            try:
                return self._read().execute("SELECT COUNT(*) FROM answers").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return 0
                raise

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Fold the write-ahead log into the main file, so a committed cache is one file."""
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        with self._write_lock:
            if self._writer is None:
                return
            # another process may hold the database: the last one to close folds the log in
            with contextlib.suppress(sqlite3.OperationalError):
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._writer.close()
            self._writer = None


class Stores:
    """The stores of one run, local first, then shared; answers are written behind, by one thread.

    ``get`` looks in the queue of answers not yet written, then in each store in turn; an answer
    found only in the shared store is copied into the local one, so the checkout has it offline
    next time. ``put`` only queues: the writer thread commits the queue to the stores in batches
    (FLUSH_BATCH answers, or FLUSH_SECONDS after the first one waited), and ``flush`` waits until
    everything queued is written. A write that failed is raised by the next ``flush``: answers
    are never dropped silently. The local cache's facts about models (``fact``/``remember``) go
    the same way, so nothing here ever waits for a lock on the event loop.
    """

    def __init__(self, local: Cache | None, shared: Store | None = None):
        self.local = local
        self.shared = shared
        self.stores: list[Store] = [s for s in (local, shared) if s is not None]
        # key -> (value, where it goes: "all" stores, "local" only (a copy of a shared answer), or "fact", a fact
        # about a model for the local cache); waiting, and the batch being written
        self._queue: dict[str, tuple[Any, str]] = {}
        self._writing: dict[str, tuple[Any, str]] = {}
        self._first_queued: float | None = None
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._failure: BaseException | None = None

    def __bool__(self) -> bool:
        return bool(self.stores)

    def pending(self, key: str) -> Answer | None:
        """An answer queued or being written: no I/O, so the event loop may ask."""
        entry = self._queued(key)
        return None if entry is None or entry[1] == "fact" else entry[0]

    def _queued(self, key: str) -> tuple[Any, str] | None:
        with self._condition:
            return self._queue.get(key) or self._writing.get(key)

    def get(self, key: str) -> tuple[Answer, str] | None:
        """The answer and where it came from ("pending", "local", "shared"); blocking, for a worker thread."""
        queued = self.pending(key)
        if queued is not None:
            return queued, "pending"
        if self.local is not None:
            found = self.local.get(key)
            if found is not None:
                return found, "local"
        if self.shared is not None:
            found = self.shared.get(key)
            if found is not None:
                if self.local is not None:
                    self._enqueue(key, found, "local")
                return found, "shared"
        return None

    def put(self, key: str, value: Answer) -> None:
        """Queue an answer for every store; returns at once."""
        if self.stores:
            self._enqueue(key, value, "all")

    def fact(self, key: str) -> Any:
        """A fact about a model (``Cache.fact``), queued or stored; None when not known. Blocking, for a worker thread."""
        entry = self._queued(key)
        if entry is not None and entry[1] == "fact":
            return entry[0]
        return self.local.fact(key) if self.local is not None else None

    def remember(self, key: str, value: Any) -> None:
        """Queue a fact for the local cache; returns at once (a write may wait for another process's lock)."""
        if self.local is not None:
            self._enqueue(key, value, "fact")

    def _enqueue(self, key: str, value: Any, where: str) -> None:
        with self._condition:
            self._queue[key] = (value, where)
            if self._first_queued is None:
                self._first_queued = time.monotonic()
            if self._thread is None:
                self._closing = False
                self._thread = threading.Thread(target=self._write_loop, name="judgeopt-cache-writer", daemon=True)
                self._thread.start()
            self._condition.notify_all()

    def flush(self) -> None:
        """Wait until every queued answer is written; raise what a write raised since the last flush."""
        with self._condition:
            if self._queue:
                self._first_queued = 0.0  # due now
                self._condition.notify_all()
            while self._queue or self._writing:
                self._condition.wait()
            failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _write_loop(self) -> None:
        while True:
            with self._condition:
                while not self._due():
                    if self._closing:
                        return
                    first = self._first_queued
                    self._condition.wait(None if first is None else max(0.0, first + FLUSH_SECONDS - time.monotonic()))
                self._writing, self._queue = self._queue, {}
                self._first_queued = None
                batch = self._writing
            try:
                self._write(batch)
            except BaseException as exc:  # handed to the next flush(), in the thread that can act on it
                with self._condition:
                    self._failure = exc
            finally:
                with self._condition:
                    self._writing = {}
                    self._condition.notify_all()

    def _due(self) -> bool:
        if not self._queue:
            return False
        first = self._first_queued
        return self._closing or len(self._queue) >= FLUSH_BATCH or first is None or time.monotonic() >= first + FLUSH_SECONDS

    def _write(self, batch: dict[str, tuple[Any, str]]) -> None:
        if self.local is not None:
            answers = [(key, value) for key, (value, where) in batch.items() if where != "fact"]
            if answers:
                self.local.put_many(answers)
            for key, (value, where) in batch.items():
                if where == "fact":
                    self.local.remember(key, value)
        if self.shared is not None:
            shared = [(key, value) for key, (value, where) in batch.items() if where == "all"]
            if shared:
                self.shared.put_many(shared)

    def close(self) -> None:
        """Write what is queued, stop the writer, close every store (they reopen if used again)."""
        try:
            self.flush()
        finally:
            with self._condition:
                self._closing = True
                self._condition.notify_all()
                thread, self._thread = self._thread, None
            if thread is not None:
                thread.join()
            for store in self.stores:
                store.close()
