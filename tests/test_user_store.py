"""The serving user store (SQLite, WAL): atomic durable writes, crash hooks, export to a dataset."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from copl_ray.data.dataset import read_annotations, read_table, validate_dataset
from copl_ray.store import StoreSchemaError, UserExistsError, UserStore
from copl_ray.store.export import export_users

ANN = [("r0a", "r0b", "p0"), ("r1a", "r1b", None)]


def test_create_get_grow_delete(tmp_path):
    store = UserStore(tmp_path / "s" / "users.db")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rec = store.create_user("new", np.arange(4, dtype=np.float32), ANN, "khop", 3)
    assert rec.n_annotations == 2
    with pytest.raises(UserExistsError):
        store.create_user("new", np.zeros(4), [])
    got = store.get("new")
    np.testing.assert_array_equal(got.embedding, np.arange(4, dtype=np.float32))
    assert got.resolution == "khop" and got.n_annotations == 2
    seen = []

    def recompute(all_ann):
        seen.append(list(all_ann))
        return np.ones(4), "widened", 7

    grown = store.add_annotations("new", [("r2a", "r2b")], recompute)
    assert seen[0] == ANN + [("r2a", "r2b", None)]  # adapted again from all its annotations
    assert grown.n_annotations == 3 and store.get("new").resolution == "widened"
    assert store.add_annotations("nobody", [("a", "b")], recompute) is None
    assert store.count() == 1 and store.delete("new") and not store.delete("new")
    assert store.get("new") is None and store.annotation_table().num_rows == 0  # cascade


def test_failed_write_leaves_nothing_and_committed_write_survives_a_kill(tmp_path):
    path = tmp_path / "users.db"

    def boom(step):
        if step == "before_commit":
            raise RuntimeError("injected")

    store = UserStore(path, crash_hook=boom)
    with pytest.raises(RuntimeError, match="injected"):
        store.create_user("u", np.zeros(2), ANN)
    assert store.snapshot() == {"users": [], "annotations": []}
    # A process killed right after the commit returned: the user is on disk.
    code = ("import os, numpy as np; from copl_ray.store import UserStore;"
            f"s = UserStore({str(path)!r}, crash_hook=lambda step: step == 'after_commit' and os._exit(137));"
            "s.create_user('u', np.ones(2), [('r0a', 'r0b', 'p0')])")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 137
    again = UserStore(path)
    assert again.get("u").n_annotations == 1


def test_schema_version_is_checked(tmp_path):
    path = tmp_path / "users.db"
    UserStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreSchemaError, match="schema version 99"):
        UserStore(path)


def test_export_makes_onboarded_users_seen_users_of_the_dataset(tiny_dataset, tmp_path):
    store = UserStore(tmp_path / "users.db")
    store.create_user("newbie", np.zeros(4), ANN)
    store.create_user("alice", np.zeros(4), [("r0a", "r0b", "p0")])  # already in the dataset
    res = export_users(store, tiny_dataset)
    assert res.exported_users == ["newbie"] and res.n_annotations == 2 and res.skipped_users == ["alice"]
    validate_dataset(tiny_dataset)
    users = read_table(tiny_dataset, "users").to_pylist()
    assert {"user_id": "newbie", "split": "seen", "group": None} in users
    train = read_annotations(tiny_dataset, "train").to_pylist()
    mine = [r for r in train if r["user_id"] == "newbie"]
    assert [(r["chosen_id"], r["rejected_id"], r["prompt_id"]) for r in mine] == [
        ("r0a", "r0b", "p0"), ("r1a", "r1b", "p1")]  # the missing prompt_id taken from responses
    again = export_users(store, tiny_dataset)
    assert again.exported_users == [] and sorted(again.skipped_users) == ["alice", "newbie"]


def test_export_job_writes_metrics(tiny_dataset, tmp_path):
    from tests.job_loader import load_job

    store = UserStore(tmp_path / "users.db")
    store.create_user("newbie", np.zeros(4), ANN)
    m = load_job("export_users").main([f"store_path={tmp_path / 'users.db'}", f"dataset={tiny_dataset}",
                                       f"output_dir={tmp_path / 'out'}"])
    assert m["exported_users"] == 1 and (tmp_path / "out" / "metrics.json").is_file()
