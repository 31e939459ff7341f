"""Durable store of onboarded users: one SQLite file in WAL mode.

Tables (schema version in ``meta``):

    users        user_id PK, embedding BLOB (float32 [d]), dim, resolution, n_neighbors,
                 created_at, updated_at (unix seconds)
    annotations  user_id -> users ON DELETE CASCADE, prompt_id (nullable), chosen_id, rejected_id,
                 created_at

Every write is one transaction committed with ``synchronous=FULL`` before the method returns, so
a server that answers after the call has the user on disk (a SIGKILL of the process after that
loses nothing). A write either lands whole (user + all its annotations + embedding) or not at all.
Several processes may open the same file (Serve replicas on one node share it; SQLite's locks
serialize writers, ``busy_timeout`` waits for them). Nodes that serve together need a shared
database server instead; this file-backed store is for one node.

``crash_hook(step)`` is for tests: it is called at ``"before_commit"`` and ``"after_commit"`` of
every write and may raise or ``os._exit`` there.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa

__all__ = ["UserStore", "UserRecord", "UserExistsError", "StoreSchemaError", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    embedding BLOB NOT NULL,
    dim INTEGER NOT NULL,
    resolution TEXT,
    n_neighbors INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS annotations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    prompt_id TEXT,
    chosen_id TEXT NOT NULL,
    rejected_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS annotations_user ON annotations(user_id);
"""


class UserExistsError(KeyError):
    """The user id is already in the store."""


class StoreSchemaError(RuntimeError):
    """The file holds another schema version."""


@dataclass
class UserRecord:
    """One onboarded user: ``embedding [d]`` float32."""

    user_id: str
    embedding: np.ndarray
    resolution: str | None
    n_neighbors: int | None
    n_annotations: int
    created_at: float
    updated_at: float


Annotation = tuple  # (chosen_id, rejected_id, prompt_id or None)


class UserStore:
    """Onboarded users, their embeddings and annotations in one SQLite (WAL) file.

    Args:
        path: the database file (created with its folder if absent).
        crash_hook: tests only; called with ``"before_commit"`` / ``"after_commit"``.
    """

    def __init__(self, path: str | os.PathLike, crash_hook: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._crash_hook = crash_hook
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=30000")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    self._db.execute(stmt)
                row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None:
                    self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) != SCHEMA_VERSION:
                    raise StoreSchemaError(f"{self.path}: schema version {row[0]}, this code reads {SCHEMA_VERSION}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ writes

    def _write(self, fn):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._db)
                if self._crash_hook:
                    self._crash_hook("before_commit")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if self._crash_hook:
            self._crash_hook("after_commit")
        return out

    def create_user(self, user_id: str, embedding: np.ndarray, annotations: Iterable[Annotation],
                    resolution: str | None = None, n_neighbors: int | None = None) -> UserRecord:
        """Insert a new user with its annotations; `UserExistsError` if the id is taken."""
        emb = np.ascontiguousarray(np.asarray(embedding, dtype=np.float32).reshape(-1))
        rows = [(a[0], a[1], a[2] if len(a) > 2 else None) for a in annotations]
        now = time.time()

        def fn(db):
            try:
                db.execute("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (user_id, emb.tobytes(), emb.size, resolution, n_neighbors, now, now))
            except sqlite3.IntegrityError:
                raise UserExistsError(user_id) from None
            db.executemany("INSERT INTO annotations (user_id, prompt_id, chosen_id, rejected_id, created_at) "
                           "VALUES (?, ?, ?, ?, ?)", [(user_id, p, c, r, now) for c, r, p in rows])

        self._write(fn)
        return UserRecord(user_id, emb, resolution, n_neighbors, len(rows), now, now)

    def add_annotations(self, user_id: str, annotations: Iterable[Annotation],
                        embedding_of: Callable[[list[Annotation]], tuple[np.ndarray, str | None, int | None]]
                        ) -> UserRecord | None:
        """Append annotations and store the embedding ``embedding_of(all annotations)`` computes, in
        one transaction (a concurrent writer cannot slip in between). None if the user is unknown."""
        rows = [(a[0], a[1], a[2] if len(a) > 2 else None) for a in annotations]
        now = time.time()

        def fn(db):
            row = db.execute("SELECT created_at FROM users WHERE user_id=?", (user_id,)).fetchone()
            if row is None:
                return None
            old = db.execute("SELECT chosen_id, rejected_id, prompt_id FROM annotations WHERE user_id=? "
                             "ORDER BY id", (user_id,)).fetchall()
            emb, resolution, n_nbr = embedding_of([tuple(r) for r in old] + rows)
            emb = np.ascontiguousarray(np.asarray(emb, dtype=np.float32).reshape(-1))
            db.executemany("INSERT INTO annotations (user_id, prompt_id, chosen_id, rejected_id, created_at) "
                           "VALUES (?, ?, ?, ?, ?)", [(user_id, p, c, r, now) for c, r, p in rows])
            db.execute("UPDATE users SET embedding=?, dim=?, resolution=?, n_neighbors=?, updated_at=? "
                       "WHERE user_id=?", (emb.tobytes(), emb.size, resolution, n_nbr, now, user_id))
            return UserRecord(user_id, emb, resolution, n_nbr, len(old) + len(rows), row[0], now)

        return self._write(fn)

    def delete(self, user_id: str) -> bool:
        """Remove a user and its annotations; False if it was not there."""
        return self._write(lambda db: db.execute("DELETE FROM users WHERE user_id=?", (user_id,)).rowcount > 0)

    # ------------------------------------------------------------------ reads

    def get(self, user_id: str) -> UserRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT embedding, resolution, n_neighbors, created_at, updated_at, "
                "(SELECT COUNT(*) FROM annotations a WHERE a.user_id=u.user_id) FROM users u WHERE user_id=?",
                (user_id,)).fetchone()
        if row is None:
            return None
        return UserRecord(user_id, np.frombuffer(row[0], dtype=np.float32).copy(), row[1], row[2], row[5],
                          row[3], row[4])

    def annotations(self, user_id: str) -> list[Annotation]:
        with self._lock:
            return [tuple(r) for r in self._db.execute(
                "SELECT chosen_id, rejected_id, prompt_id FROM annotations WHERE user_id=? ORDER BY id", (user_id,))]

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    def user_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT user_id FROM users ORDER BY created_at, user_id")]

    def annotation_table(self) -> pa.Table:
        """Every stored annotation as contract columns (``kind`` null), in insertion order."""
        with self._lock:
            rows = self._db.execute("SELECT user_id, prompt_id, chosen_id, rejected_id FROM annotations "
                                    "ORDER BY id").fetchall()
        cols = list(zip(*rows)) if rows else [[], [], [], []]
        names = ["user_id", "prompt_id", "chosen_id", "rejected_id"]
        table = pa.table({n: pa.array(list(c), pa.string()) for n, c in zip(names, cols)})
        return table.append_column("kind", pa.nulls(table.num_rows, pa.string()))

    def snapshot(self) -> dict:
        """Everything stored, as plain values (tests compare snapshots)."""
        with self._lock:
            users = self._db.execute("SELECT * FROM users ORDER BY user_id").fetchall()
            ann = self._db.execute("SELECT * FROM annotations ORDER BY id").fetchall()
        return {"users": users, "annotations": ann}
