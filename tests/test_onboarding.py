"""Onboarding keeps data: new users and their annotations land in the dataset atomically, a crash
at any point (between steps, or a SIGKILL in the middle of a write) leaves a valid dataset that
still holds everything written before."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from copl_ray.adapt.onboarding import onboard_users
from copl_ray.data import DatasetError, read_annotations, read_table, validate_dataset

ROOT = Path(__file__).resolve().parents[1]


def _new(users, chosen="r0a", rejected="r0b", prompt="p0"):
    n = len(users)
    return pa.table({"user_id": users, "prompt_id": [prompt] * n, "chosen_id": [chosen] * n,
                     "rejected_id": [rejected] * n})


def _snapshot(root):
    return {s: read_annotations(root, s).num_rows for s in ("train", "test", "fewshot", "test_unseen")}


def test_onboard_appends_users_and_train_shard(tiny_dataset):
    before = _snapshot(tiny_dataset)
    res = onboard_users(tiny_dataset, _new(["zoe", "zoe", "yan"]), groups={"zoe": "short"})
    assert res.new_users == ["zoe", "yan"] and res.n_annotations == 3 and res.shard.name.startswith("append-")
    summary = validate_dataset(tiny_dataset)
    assert summary.n_seen_users == 6 and summary.n_unseen_users == 2
    users = read_table(tiny_dataset, "users")
    zoe = users.filter(pc.equal(users.column("user_id"), "zoe")).to_pylist()[0]
    assert zoe["split"] == "seen" and zoe["group"] == "short"
    after = _snapshot(tiny_dataset)
    assert after["train"] == before["train"] + 3 and {k: after[k] for k in ("test", "fewshot")} == \
        {k: before[k] for k in ("test", "fewshot")}
    # the next graph build reads them: they are train rows of seen users
    train = read_annotations(tiny_dataset, "train")
    assert pc.sum(pc.equal(train.column("user_id"), "zoe")).as_py() == 2


@pytest.mark.parametrize("table, match", [
    (_new(["zoe"], chosen="nope"), r"row 0: field 'chosen_id' names unknown response 'nope'"),
    (_new(["zoe"], rejected="r0a"), r"row 0: fields 'chosen_id' and 'rejected_id' are the same"),
    (_new(["zoe", "alice"]), r"row 1: field 'user_id' 'alice' is already in the dataset \(split 'seen'\)"),
    (_new(["erin"]), r"row 0: field 'user_id' 'erin' is already in the dataset \(split 'unseen'\)"),
    (_new(["zoe"], prompt="p9"), r"row 0: field 'prompt_id' names unknown prompt 'p9'"),
    (pa.table({"user_id": ["zoe"], "chosen_id": ["r0a"], "rejected_id": ["r0b"]}), "missing column 'prompt_id'"),
])
def test_bad_rows_refused_and_nothing_written(tiny_dataset, table, match):
    users_before = read_table(tiny_dataset, "users")
    with pytest.raises(DatasetError, match=match):
        onboard_users(tiny_dataset, table)
    assert read_table(tiny_dataset, "users").equals(users_before)
    assert _snapshot(tiny_dataset)["train"] == 8


_CHILD = """
import sys
sys.path.insert(0, {root!r})
import pyarrow as pa
from copl_ray.adapt.onboarding import onboard_users
n = {n}
users = [f"new{{i:07d}}" for i in range(n)]
onboard_users({ds!r}, pa.table({{"user_id": users, "prompt_id": ["p0"] * n, "chosen_id": ["r0a"] * n,
                                 "rejected_id": ["r0b"] * n}}), crash_after={crash!r})
"""


@pytest.mark.parametrize("step", ["users", "annotations"])
def test_crash_between_steps_leaves_valid_dataset(tiny_dataset, step):
    proc = subprocess.run([sys.executable, "-c", _CHILD.format(root=str(ROOT), n=3, ds=str(tiny_dataset),
                                                               crash=step)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 137, proc.stderr
    summary = validate_dataset(tiny_dataset)
    assert summary.n_seen_users == 4 + 3  # users were written first
    assert _snapshot(tiny_dataset)["train"] == 8 + (3 if step == "annotations" else 0)


def test_sigkill_mid_write_keeps_dataset_valid(tiny_dataset):
    """Kill the onboarder while a large write is in flight (a temporary file exists)."""
    before_users = read_table(tiny_dataset, "users").num_rows
    proc = subprocess.Popen([sys.executable, "-c",
                             _CHILD.format(root=str(ROOT), n=400_000, ds=str(tiny_dataset), crash=None)])
    folders = [tiny_dataset, tiny_dataset / "annotations" / "train"]
    deadline = time.time() + 60
    seen_tmp = False
    while time.time() < deadline and proc.poll() is None:
        if any(p.name.endswith(".tmp") for f in folders for p in f.iterdir()):
            seen_tmp = True
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=30)
    assert seen_tmp, "the write finished before it could be interrupted"
    summary = validate_dataset(tiny_dataset)
    n_users = read_table(tiny_dataset, "users").num_rows
    assert n_users in (before_users, before_users + 400_000)  # old file or new file, never half
    train = _snapshot(tiny_dataset)["train"]
    assert train in (8, 8 + 400_000)
    assert summary.n_annotations["test"] == 2 and summary.n_annotations["fewshot"] == 2
