"""Helpers shared by the importers: reading JSON records with located errors, stable ids, and the
vectorized construction of simulated users and their annotations (paper Sec. 5.1, App. D.1).

Every importer reduces its source to *pair pools*: a ``train`` pool (the survey set that seen users
annotate and unseen users draw their few-shot pairs from) and a ``test`` pool (held-out pairs). A
pool is a table of unordered response pairs ``(prompt_id, first_id, second_id)``; who prefers which
response is decided per user by an ``orient(user [N], pair [N], pool) -> first_wins [N] bool``
function, so labels are computed for millions of annotations in one numpy call. Per-pair data the
labelling needs (aspect labels, reward-model score differences) travels in ``PairPool.data``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from copl_ray.data.dataset import DatasetError

# Default per-user counts of the paper (Sec. 5.1): 10 test pairs per seen user; 100 unseen users
# with 50 test pairs each; few-shot annotations = the preset's n_context.
DEFAULT_N_TEST = 10
DEFAULT_N_UNSEEN_TEST = 50


class FormatError(DatasetError):
    """Source data that does not follow its documented format; names file, line/row and field."""


def located(path: Path, line: int | None, field: str, problem: str) -> FormatError:
    where = f"{path}: line {line}" if line is not None else str(path)
    return FormatError(f"{where}: field {field!r} {problem}")


def source_files(path: str | os.PathLike, patterns: Sequence[str], what: str) -> list[Path]:
    """``path`` itself if it is a file, else the files under it matching ``patterns`` (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FormatError(f"{path}: input for {what} not found")
    files = sorted({p for pat in patterns for p in path.rglob(pat) if not p.name.startswith(".")})
    if not files:
        raise FormatError(f"{path}: no {what} files matching {list(patterns)}")
    return files


def iter_json_records(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` from a JSON-lines file, or from a JSON array file (the
    older UltraFeedback ``*.json`` shape; line numbers then count array items from 1)."""
    with open(path, "r", encoding="utf-8") as fh:
        head = fh.read(1024).lstrip()
        fh.seek(0)
        if head.startswith("["):
            try:
                items = json.load(fh)
            except json.JSONDecodeError as exc:
                raise FormatError(f"{path}: line {exc.lineno}: not valid JSON: {exc.msg}") from None
            for i, item in enumerate(items, start=1):
                if not isinstance(item, dict):
                    raise located(path, i, "<record>", f"is a {type(item).__name__}, expected an object")
                yield i, item
            return
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FormatError(f"{path}: line {lineno}: not valid JSON: {exc.msg}") from None
            if not isinstance(item, dict):
                raise located(path, lineno, "<record>", f"is a {type(item).__name__}, expected an object")
            yield lineno, item


def require(record: dict, key: str, types: type | tuple, path: Path, line: int, field: str | None = None):
    """``record[key]`` checked against ``types``; a missing key or wrong type names the field."""
    field = field or key
    if key not in record:
        raise located(path, line, field, "is missing")
    value = record[key]
    allowed = types if isinstance(types, tuple) else (types,)
    # bool is an int subclass in Python; a JSON true is not a valid choice index.
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise located(path, line, field, f"is {type(value).__name__} {value!r:.40}, expected {names}")
    return value


def stable_id(prefix: str, *parts: str) -> str:
    """Content-derived id: the same text always gets the same id, across runs and machines."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return f"{prefix}-{h.hexdigest()}"


# ----------------------------------------------------------------------------- pair pools


@dataclass
class PairPool:
    """Unordered response pairs a user can be asked about.

    Attributes:
        prompt_id, first_id, second_id: [P] string arrays (numpy object).
        kind: [P] "common"/"controversial"/None per pair (same for every user).
        data: per-pair arrays [P, ...] that ``orient`` reads (e.g. aspect labels, score gaps).
    """

    prompt_id: np.ndarray
    first_id: np.ndarray
    second_id: np.ndarray
    kind: np.ndarray
    data: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompt_id)


def sample_without_replacement(rng: np.random.Generator, counts: np.ndarray, pool_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``counts[i]`` distinct pair indices for each user i, vectorized.

    Returns:
        user [sum(counts)] int64 and pair [sum(counts)] int64, grouped by user.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = len(counts)
    cmax = int(counts.max()) if n else 0
    if cmax > pool_size:
        raise DatasetError(f"a user needs {cmax} distinct pairs but the pool holds only {pool_size}"
                           " (lower n_context / n_test / n_unseen_test / n_fewshot, or import more data)")
    if n == 0 or cmax == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if cmax * 4 <= pool_size:
        # Rejection: draw with replacement, redraw the (rare) rows that repeat a pair.
        draw = rng.integers(0, pool_size, size=(n, cmax))
        while True:
            s = np.sort(draw, axis=1)
            bad = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
            if not bad.size:
                break
            draw[bad] = rng.integers(0, pool_size, size=(bad.size, cmax))
    else:
        # Small pool relative to the request: top-cmax of random keys per row, in chunks.
        draw = np.empty((n, cmax), np.int64)
        step = max(1, 2_000_000 // pool_size)
        for start in range(0, n, step):
            keys = rng.random((min(step, n - start), pool_size))
            draw[start:start + step] = np.argsort(keys, axis=1)[:, :cmax]
    keep = np.arange(cmax)[None, :] < counts[:, None]
    user = np.broadcast_to(np.arange(n)[:, None], draw.shape)[keep]
    return user.astype(np.int64), draw[keep].astype(np.int64)


def annotation_counts(rng: np.random.Generator, n_users: int, n_context: int, mode: str) -> np.ndarray:
    """Survey size per user: ``all`` = exactly n_context; ``avg`` = uniform on 1..2*n_context-1
    (mean n_context), as in paper Sec. 5.1."""
    if mode == "all":
        return np.full(n_users, n_context, np.int64)
    if mode == "avg":
        return rng.integers(1, 2 * n_context, size=n_users).astype(np.int64)
    raise ValueError(f"annotations must be 'all' or 'avg', got {mode!r}")


def annotate(pool: PairPool, user_ids: np.ndarray, user: np.ndarray, pair: np.ndarray,
             orient: Callable[[np.ndarray, np.ndarray, PairPool], np.ndarray]) -> pa.Table:
    """Annotation rows (contract columns) for (user index, pair index) draws, labelled by
    ``orient(user [N], pair [N], pool) -> first_wins [N] bool``."""
    first_wins = np.asarray(orient(user, pair, pool), dtype=bool)
    a, b = pool.first_id[pair], pool.second_id[pair]
    return pa.table({
        "user_id": pa.array(user_ids[user], pa.string()),
        "prompt_id": pa.array(pool.prompt_id[pair], pa.string()),
        "chosen_id": pa.array(np.where(first_wins, a, b), pa.string()),
        "rejected_id": pa.array(np.where(first_wins, b, a), pa.string()),
        "kind": pa.array(pool.kind[pair], pa.string()),
    })


@dataclass
class SimulationPlan:
    """How many users and annotations to simulate (options shared by every source)."""

    n_users: int
    n_unseen_users: int
    n_context: int
    annotations: str
    n_test: int = DEFAULT_N_TEST
    n_unseen_test: int = DEFAULT_N_UNSEEN_TEST
    n_fewshot: int | None = None  # defaults to n_context (paper: 8 or 16 few-shot annotations)


def even_groups(n: int, n_groups: int) -> np.ndarray:
    """Group index [n] of users split evenly into contiguous blocks (paper: users 0-4,999 short,
    5,000-9,999 long); unseen users are split the same way ("evenly distributed")."""
    return (np.arange(n) * n_groups) // max(n, 1)


def simulate_users(plan: SimulationPlan, train: PairPool, test: PairPool,
                   orient_seen, orient_unseen, rng: np.random.Generator) -> tuple[pa.Table, dict[str, pa.Table]]:
    """Draw every user's annotations from the pools.

    Seen users: survey (train) pairs, counts by ``plan.annotations``, and ``n_test`` test pairs.
    Unseen users: ``n_fewshot`` pairs from the train pool (their responses are in the graph, which
    the k-hop adaptation needs) and ``n_unseen_test`` test pairs. ``orient_seen(u, p, pool)`` /
    ``orient_unseen(u, p, pool)`` label pair p of ``pool`` for the u-th seen / unseen user.

    Returns:
        ``((seen_ids [n_users], unseen_ids [n_unseen_users]), {split: annotation table})``; ids are
        ``user-000000`` / ``unseen-0000``, zero-padded so they sort in index order.
    """
    width = max(6, len(str(plan.n_users)))
    seen_ids = np.array([f"user-{i:0{width}d}" for i in range(plan.n_users)], dtype=object)
    unseen_ids = np.array([f"unseen-{i:04d}" for i in range(plan.n_unseen_users)], dtype=object)
    n_fewshot = plan.n_fewshot if plan.n_fewshot is not None else plan.n_context
    counts = annotation_counts(rng, plan.n_users, plan.n_context, plan.annotations)
    out = {}
    u, p = sample_without_replacement(rng, counts, len(train))
    out["train"] = annotate(train, seen_ids, u, p, orient_seen)
    u, p = sample_without_replacement(rng, np.full(plan.n_users, plan.n_test), len(test))
    out["test"] = annotate(test, seen_ids, u, p, orient_seen)
    if plan.n_unseen_users:
        u, p = sample_without_replacement(rng, np.full(plan.n_unseen_users, n_fewshot), len(train))
        out["fewshot"] = annotate(train, unseen_ids, u, p, orient_unseen)
        u, p = sample_without_replacement(rng, np.full(plan.n_unseen_users, plan.n_unseen_test), len(test))
        out["test_unseen"] = annotate(test, unseen_ids, u, p, orient_unseen)
    return (seen_ids, unseen_ids), out


def users_table(seen_ids: np.ndarray, unseen_ids: np.ndarray, seen_group: np.ndarray | None,
                unseen_group: np.ndarray | None, extra: dict[str, pa.Array] | None = None) -> pa.Table:
    """users.parquet rows: seen users first, then unseen; ``group`` null where there are no groups."""
    n_s, n_u = len(seen_ids), len(unseen_ids)
    group = None
    if seen_group is not None:
        group = np.concatenate([seen_group, unseen_group if unseen_group is not None else
                                np.full(n_u, None, dtype=object)])
    table = pa.table({
        "user_id": pa.array(np.concatenate([seen_ids, unseen_ids]), pa.string()),
        "split": pa.array(["seen"] * n_s + ["unseen"] * n_u, pa.string()),
        "group": pa.array(group, pa.string()) if group is not None else pa.nulls(n_s + n_u, pa.string()),
    })
    for name, column in (extra or {}).items():
        table = table.append_column(name, column)
    return table


def pool_tables(pools: Sequence[PairPool], prompt_text: dict[str, str], response_text: dict[str, str],
                response_prompt: dict[str, str]) -> tuple[pa.Table, pa.Table]:
    """prompts and responses tables holding every item of the pools (so the survey set is complete
    even where no simulated user drew a pair)."""
    resp = set()
    for pool in pools:
        resp.update(pool.first_id.tolist())
        resp.update(pool.second_id.tolist())
    rids = sorted(resp)
    pids = sorted({response_prompt[r] for r in rids})
    prompts = pa.table({"prompt_id": pa.array(pids, pa.string()),
                        "text": pa.array([prompt_text[p] for p in pids], pa.string())})
    responses = pa.table({"response_id": pa.array(rids, pa.string()),
                          "prompt_id": pa.array([response_prompt[r] for r in rids], pa.string()),
                          "text": pa.array([response_text[r] for r in rids], pa.string())})
    return prompts, responses


def split_prompts(rng: np.random.Generator, prompt_ids: Sequence[str], test_fraction: float) -> set[str]:
    """A seeded ``test_fraction`` of the distinct prompts, held out as the test pool (CoPL holds out
    10% of UltraFeedback prompts)."""
    distinct = np.array(sorted(set(prompt_ids)), dtype=object)
    n_test = int(round(test_fraction * len(distinct)))
    return set(distinct[rng.permutation(len(distinct))[:n_test]].tolist())
