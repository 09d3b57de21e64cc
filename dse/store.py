"""The DSE store: every evaluated point in SQLite, committed as it arrives."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from pathlib import Path

from .spec import SpecError


class StoreError(SpecError):
    """A store that cannot be used: not a DSE store, or in use by another run."""


class Store:
    """Every evaluated point, in SQLite, written (and committed) as it arrives.

    ``points.key`` is the canonical hash of the parameters, so a point is stored at most
    once; ``meta.spec`` holds the spec fingerprint, so a store is never resumed with a
    spec whose results would differ.

    A writing store holds an exclusive lock (``flock`` on ``PATH.lock``) while it is open:
    a second run on the same store is refused at once, naming the run that holds it,
    instead of evaluating the same points again and discarding them (``INSERT OR
    IGNORE``) as "0 evaluated". The kernel drops the lock when its process dies, even by
    SIGKILL, so a killed run never blocks its resumption. ``readonly`` stores (a report
    of a running exploration) take no lock.
    """

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not readonly:
            self._lock = self._acquire()
        try:
            self.db = sqlite3.connect(str(self.path), timeout=60)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS points (key TEXT PRIMARY KEY, seq INTEGER, "
                "params TEXT, status TEXT, reason TEXT, metrics TEXT, extra TEXT, "
                "seconds REAL, created REAL)"
            )
            self.db.commit()
        except sqlite3.Error as e:
            self.close()
            raise StoreError(f"{self.path}: not a usable DSE store: {e}") from None

    def _acquire(self):
        """The store's lock file, locked; StoreError naming the holder if another run has it."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        f = open(lock_path, "a+")  # noqa: SIM115 (held open while the store is)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise StoreError(
                f"{self.path}: in use by another DSE run ({holder}); wait for it to finish, "
                f"or give another --out or --store (two runs on one store would evaluate "
                f"the same points twice)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        return f

    def bind(self, fingerprint: str) -> None:
        """Tie the store to a spec's fingerprint; SpecError if it holds another spec's
        points (a read-only store is only checked: a report of another spec's points
        would label them with this spec's objectives and workload)."""
        row = self.db.execute("SELECT v FROM meta WHERE k='spec'").fetchone()
        if row is None and self.readonly:
            return
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('spec', ?)", (fingerprint,))
            self.db.commit()
        elif row[0] != fingerprint:
            raise SpecError(
                f"{self.path} holds points of another spec (fingerprint {row[0]}, "
                f"not {fingerprint}); give another --store or --out"
            )

    def keys(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT key FROM points")}

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM points").fetchone()[0]

    def put(self, row: dict, extra: dict | None = None) -> bool:
        """Store a result; False if its key was already stored (it is then ignored)."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO points VALUES "
            "(?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM points),"
            " ?, ?, ?, ?, ?, ?, ?)",
            (
                row["key"],
                json.dumps(row["params"], sort_keys=True),
                row["status"],
                row["reason"],
                json.dumps(row["metrics"], sort_keys=True),
                json.dumps(extra or {}),
                row.get("seconds", 0.0),
                time.time(),
            ),
        )
        self.db.commit()
        return cur.rowcount == 1

    def get(self, key: str) -> dict | None:
        r = self.db.execute(
            "SELECT key, params, status, reason, metrics, extra, seconds FROM points WHERE key=?",
            (key,),
        ).fetchone()
        return None if r is None else self._row(r)

    def rows(self) -> list[dict]:
        return [
            self._row(r)
            for r in self.db.execute(
                "SELECT key, params, status, reason, metrics, extra, seconds "
                "FROM points ORDER BY seq"
            )
        ]

    @staticmethod
    def _row(r) -> dict:
        return {
            "key": r[0],
            "params": json.loads(r[1]),
            "status": r[2],
            "reason": r[3],
            "metrics": json.loads(r[4]),
            "extra": json.loads(r[5]),
            "seconds": r[6],
        }

    def __del__(self) -> None:  # a store dropped without close() still frees its lock
        self.close()

    def close(self) -> None:
        if getattr(self, "db", None) is not None:
            self.db.close()
            self.db = None
        if getattr(self, "_lock", None) is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None
