"""What the Serve deployments do, as plain classes tested without Serve.

* `ScoringCore`: the reward model of a reward_dir; ``score(items)`` runs ONE batched forward over
  every response of every item (the mixed-user MoLE path: each row carries its own user).
* `UserDirectory`: user id -> embedding, from the GNN's seen users (plus adapted users of
  ``adapt_dir``, or the learned table of ``no_gnn``) and the onboarded users of the `UserStore`.
* `OnboardingCore`: Eq. 11 adaptation of a new user from its annotations (`copl_ray.adapt.adapt_one`),
  written to the store before it returns; the active survey selector.

Errors a caller can fix raise `RequestError(status, field, message)`; the HTTP layer answers them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from copl_ray.serving.protocol import Limits

__all__ = ["RequestError", "ScoringCore", "ForwardCoalescer", "UserDirectory", "OnboardingCore", "dataset_of"]


class RequestError(Exception):
    """A bad request: HTTP ``status``, the ``field`` it is about, a message."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict:
        return {"error": self.message, "field": self.field}


def dataset_of(gnn_dir: str | os.PathLike) -> str:
    """The dataset a train_gnn output was trained on (its resolved config's ``dataset``)."""
    import yaml

    path = Path(gnn_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass dataset= (the texts of survey pairs come from it)")
    dataset = (yaml.safe_load(path.read_text()) or {}).get("dataset")
    if not dataset:
        raise ValueError(f"{path} names no dataset: pass dataset=")
    return str(dataset)


# ----------------------------------------------------------------------------- scoring


@dataclass
class ScoreItem:
    """One request: ``embedding [d]`` (None where the method ignores the user), one prompt, its responses."""

    embedding: np.ndarray | None
    prompt: str
    responses: list[str]


class ScoringCore:
    """A reward_dir's model; see the module docstring."""

    def __init__(self, reward_dir: str | os.PathLike, device: str = "auto"):
        from copl_ray.reward.artifacts import load_reward_dir

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        rd = load_reward_dir(reward_dir, map_location=device)
        if rd.method == "g_oracle":
            raise ValueError(f"{reward_dir}: method g_oracle scores each user with their true group's model; "
                             "groups are not known for served users: serve copl, no_mole, no_gnn or uniform")
        self.method, self.uses_user = rd.method, rd.uses_user
        self.model = rd.models[None].eval()
        self.encoding = rd.encoding
        self.user_dim = self.model.cfg.user_dim

    def score(self, items: list[ScoreItem]) -> list[list[float]]:
        """Rewards per item (one list per item, one float per response), one forward for all."""
        from copl_ray.reward.model import score_responses

        prompts = [it.prompt for it in items for _ in it.responses]
        responses = [r for it in items for r in it.responses]
        if not responses:
            return [[] for _ in items]
        emb = None
        if self.uses_user:
            emb = torch.from_numpy(np.stack([np.asarray(it.embedding, dtype=np.float32)
                                             for it in items for _ in it.responses]))
        rewards = score_responses(self.model, prompts, responses, emb, self.encoding).tolist()
        out, i = [], 0
        for it in items:
            out.append(rewards[i:i + len(it.responses)])
            i += len(it.responses)
        return out


class ForwardCoalescer:
    """Runs ``fn(items) -> results`` (blocking: the model forward, in a worker thread) one call at a
    time, merging every batch that waited for the busy model into the next call (up to
    ``max_items`` per call).

    Why: Ray Serve 2.60's `@serve.batch` cuts a batch every ``batch_wait_timeout_s`` whether or not
    the model is free (the batches then queue for ``max_concurrent_batches``), so under load the
    batches stay as small as the arrivals of a few milliseconds. Here a batch that arrives while
    a forward runs joins the next forward, whose size grows with the load, while a lone request
    is still scored at once.
    """

    def __init__(self, fn, max_items: int, on_forward=None):
        import asyncio

        self.fn, self.max_items, self.on_forward = fn, max_items, on_forward
        self._pending: list = []
        self._lock = asyncio.Lock()
        self.forwards, self.items, self.max_forward = 0, 0, 0

    async def submit(self, items: list) -> list:
        """Results of ``items`` (same order), possibly computed together with other callers'."""
        import asyncio

        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures))
        while not all(f.done() for f in futures):
            async with self._lock:
                if not self._pending:  # an earlier holder took ours: they are done now
                    continue
                chunk = self._pending[: self.max_items]
                del self._pending[: len(chunk)]
                self.forwards += 1
                self.items += len(chunk)
                self.max_forward = max(self.max_forward, len(chunk))
                if self.on_forward is not None:
                    self.on_forward(len(chunk))
                try:
                    results = await asyncio.to_thread(self.fn, [it for it, _ in chunk])
                except Exception as exc:  # noqa: BLE001  (every caller in the chunk gets it)
                    for _, f in chunk:
                        f.set_exception(exc)
                else:
                    for (_, f), r in zip(chunk, results):
                        f.set_result(r)
        return [f.result() for f in futures]


# ----------------------------------------------------------------------------- users


class UserDirectory:
    """Seen users (files, loaded once) and onboarded users (the store, read per request)."""

    def __init__(self, gnn_dir: str, reward_dir: str, store, adapt_dir: str | None = None):
        from copl_ray.gnn.gnn_dir import read_user_embeddings
        from copl_ray.reward.artifacts import load_reward_dir

        rd = load_reward_dir(reward_dir, load_models=False)
        self.uses_user = rd.uses_user
        table = rd.user_table(gnn_dir, adapt_dir)
        if table is None:  # Uniform: the user is not an input, but must still be a known user
            ids, _ = read_user_embeddings(gnn_dir)
            self._seen = {u: None for u in ids.to_pylist()}
            self.dim = None
        else:
            emb = table.emb.numpy()
            self._seen = {u: emb[i] for i, u in enumerate(table.index.ids.to_pylist())}
            self._source = {u: s for u, s in zip(table.index.ids.to_pylist(), table.source)}
            self.dim = int(emb.shape[1])
        self.store = store

    def is_seen(self, user_id: str) -> bool:
        return user_id in self._seen

    @property
    def n_seen(self) -> int:
        return len(self._seen)

    def embedding(self, user_id: str, field: str = "user_id") -> np.ndarray | None:
        """The user's embedding (None for methods without one); RequestError 404 if unknown."""
        if user_id in self._seen:
            return self._seen[user_id]
        rec = self.store.get(user_id)
        if rec is None:
            raise RequestError(404, field, f"unknown user {user_id!r}")
        return rec.embedding if self.uses_user else None

    def check_embedding(self, values: list[float], field: str = "user_embedding") -> np.ndarray | None:
        if not self.uses_user:
            return None
        emb = np.asarray(values, dtype=np.float32)
        if emb.shape != (self.dim,) or not np.isfinite(emb).all():
            raise RequestError(422, field, f"must be {self.dim} finite numbers")
        return emb

    def describe(self, user_id: str) -> dict:
        """GET /v1/users/{id}: 404 RequestError if unknown."""
        if user_id in self._seen:
            src = getattr(self, "_source", {}).get(user_id, "gnn")
            return {"user_id": user_id, "source": "seen", "n_annotations": 0,
                    "embedding_from": {"gnn": "gnn_dir", "adapt": "adapt_dir"}.get(src, src)}
        rec = self.store.get(user_id)
        if rec is None:
            raise RequestError(404, "user_id", f"unknown user {user_id!r}")
        return {"user_id": user_id, "source": "onboarded", "n_annotations": rec.n_annotations,
                "resolution": rec.resolution, "n_neighbors": rec.n_neighbors,
                "created_at": rec.created_at, "updated_at": rec.updated_at}


# ----------------------------------------------------------------------------- onboarding


class OnboardingCore:
    """Adaptation, store writes and the survey selector over one GNN output.

    Args:
        gnn_dir: a train_gnn output (embeddings + graph).
        dataset: its dataset (texts and prompt ids of responses, for the survey).
        store: the `UserStore`.
        adapt: `AdaptParams` fields (hops, kappa, ...).
        survey_candidates: candidate pairs (same prompt, both responses in the graph) scored per request.
    """

    def __init__(self, gnn_dir: str, dataset: str, store, limits: Limits, adapt: dict | None = None,
                 survey_candidates: int = 4000, seed: int = 0, reserved_ids=()):
        from copl_ray.adapt import AdaptParams, load_gnn_artifacts
        from copl_ray.data.dataset import read_table

        self.art = load_gnn_artifacts(gnn_dir, seed=seed)
        self.params = AdaptParams(**(adapt or {}))
        self.store, self.limits = store, limits
        self.reserved = set(self.art.user_ids.to_pylist()) | set(reserved_ids)
        responses = read_table(dataset, "responses")
        prompts = read_table(dataset, "prompts")
        self.prompt_text = dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("text").to_pylist()))
        rid = responses.column("response_id").to_pylist()
        self.prompt_of = dict(zip(rid, responses.column("prompt_id").to_pylist()))
        self.response_text = dict(zip(rid, responses.column("text").to_pylist()))
        self.cand_a, self.cand_b = self._candidates(survey_candidates, seed)

    def _candidates(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        by_prompt: dict = {}
        for i, r in enumerate(self.art.response_ids.to_pylist()):
            if r in self.prompt_of:
                by_prompt.setdefault(self.prompt_of[r], []).append(i)
        a, b = [], []
        for rows in by_prompt.values():
            for x in range(len(rows)):
                for y in range(x + 1, len(rows)):
                    a.append(rows[x])
                    b.append(rows[y])
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        if len(a) > n:
            keep = np.sort(np.random.default_rng(seed).choice(len(a), n, replace=False))
            a, b = a[keep], b[keep]
        return a, b

    def _rows(self, annotations, field: str = "annotations") -> list[tuple]:
        """[(chosen, rejected, prompt_id)] with the prompt filled from the dataset."""
        rows = []
        for i, ann in enumerate(annotations):
            if ann.prompt_id is not None and self.prompt_of.get(ann.chosen_id) not in (None, ann.prompt_id):
                raise RequestError(400, f"{field}[{i}].prompt_id",
                                   f"{ann.prompt_id!r} is not the prompt of response {ann.chosen_id!r}")
            rows.append((ann.chosen_id, ann.rejected_id, ann.prompt_id or self.prompt_of.get(ann.chosen_id)))
        return rows

    def _adapt(self, rows: list[tuple], field: str = "annotations"):
        from copl_ray.adapt import AdaptInputError, adapt_one

        try:
            res = adapt_one(self.art, {"chosen_id": [r[0] for r in rows], "rejected_id": [r[1] for r in rows]},
                            self.params)
        except AdaptInputError as exc:
            # "annotations: row 3: field 'chosen_id' names unknown response ..."
            raise RequestError(400, field, str(exc).split(": ", 1)[-1]) from None
        return res.embedding.numpy(), res.resolution, res.n_neighbors

    def onboard(self, user_id: str, annotations) -> dict:
        """Adapt and store a new user; 409 if the id is taken. Stored (committed) before it returns."""
        from copl_ray.store import UserExistsError

        if user_id in self.reserved:
            raise RequestError(409, "user_id", f"user {user_id!r} exists (a seen user)")
        if len(annotations) > self.limits.max_annotations:
            raise RequestError(400, "annotations", f"{len(annotations)} annotations, at most "
                               f"{self.limits.max_annotations} per user")
        rows = self._rows(annotations)
        emb, resolution, n_nbr = self._adapt(rows)
        try:
            self.store.create_user(user_id, emb, rows, resolution, n_nbr)
        except UserExistsError:
            raise RequestError(409, "user_id", f"user {user_id!r} exists (onboarded)") from None
        return {"user_id": user_id, "resolution": resolution, "n_annotations": len(rows), "n_neighbors": n_nbr}

    def add_annotations(self, user_id: str, annotations) -> dict:
        """Grow an onboarded user's annotations and adapt it again from all of them."""
        if user_id in self.reserved:
            raise RequestError(409, "user_id", f"user {user_id!r} is a seen user of the GNN; only onboarded "
                               "users take annotations here")
        rows = self._rows(annotations)
        self._adapt(rows)  # validate the new rows alone first: their row numbers are the caller's

        def embedding_of(all_rows):
            if len(all_rows) > self.limits.max_annotations:
                raise RequestError(400, "annotations", f"the user would have {len(all_rows)} annotations, "
                                   f"at most {self.limits.max_annotations}")
            return self._adapt(all_rows)

        rec = self.store.add_annotations(user_id, rows, embedding_of)
        if rec is None:
            raise RequestError(404, "user_id", f"unknown user {user_id!r}")
        return {"user_id": user_id, "resolution": rec.resolution, "n_annotations": rec.n_annotations,
                "n_neighbors": rec.n_neighbors}

    def survey(self, answers, n: int) -> list[dict]:
        """The next ``n`` pairs to ask a new user who gave ``answers``."""
        from copl_ray.adapt.survey import select_next_pairs

        rows = self._rows(answers, "answers")
        self._adapt(rows, "answers")  # unknown ids / same response -> 400 naming the field
        asked = np.zeros(len(self.cand_a), dtype=bool)
        if rows:
            given = {frozenset(self.art.response_index([c, r], where="answers")) for c, r, _ in rows}
            asked = np.fromiter((frozenset((a, b)) in given for a, b in zip(self.cand_a, self.cand_b)),
                                dtype=bool, count=len(self.cand_a))
        idx = select_next_pairs(self.art, {"chosen_id": [r[0] for r in rows], "rejected_id": [r[1] for r in rows]},
                                self.cand_a, self.cand_b, n=n, asked=asked, params=self.params)
        ids = self.art.response_ids.to_pylist()
        out = []
        for i in idx:
            a, b = ids[self.cand_a[i]], ids[self.cand_b[i]]
            out.append({"prompt": self.prompt_text.get(self.prompt_of[a], ""), "prompt_id": self.prompt_of[a],
                        "response_a_id": a, "response_a": self.response_text[a],
                        "response_b_id": b, "response_b": self.response_text[b]})
        return out
