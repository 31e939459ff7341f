"""The Ray Serve deployments of the scoring/onboarding application (CONTRACT section 4).

* ``Scorer``: `@serve.batch` gathers concurrent requests into one forward of the reward model
  (`ScoringCore.score`: the mixed-user MoLE path, each row its own user); batches that wait for
  the busy model are merged into its next forward (`ForwardCoalescer`). ``max_ongoing_requests``
  must be >= ``max_batch_size`` or batches never fill (ENVIRONMENT.md: with the default 5 a batch
  of 32 never got above 5); `copl_ray.serving.app.AppArgs` checks it.
* ``Onboarding``: adaptation + store writes + survey, its own deployment with an
  ``autoscaling_config``, so onboarding scales apart from scoring.
* ``Api``: the FastAPI ingress: parsing, limits, auth, user lookup, status codes.

Prometheus (through Serve's metrics export, next to its own ``ray_serve_*``):
``copl_scorer_batch_size`` (histogram of requests per forward), ``copl_onboarded_users`` (gauge),
``copl_onboarding_requests`` (counter by operation and outcome).
"""


import asyncio
import math
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.metrics import Counter, Gauge, Histogram

from copl_ray.serving.core import (ForwardCoalescer, OnboardingCore, RequestError, ScoreItem, ScoringCore,
                                  UserDirectory)
from copl_ray.serving.protocol import (AnnotationsRequest, CompareRequest, Limits, OnboardRequest, RewardRequest,
                                       ScoreRequest, SurveyRequest, bearer_ok, check_text, check_user_id,
                                       label_user, split_query)

__all__ = ["Scorer", "Onboarding", "Api"]

BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@serve.deployment(max_ongoing_requests=64)
class Scorer:
    """One reward model per replica; concurrent requests share a forward.

    `@serve.batch` gathers requests into batches; batches that arrive while the model is busy are
    merged into its next forward (`ForwardCoalescer`, at most ``max_batch_size`` requests each).
    """

    def __init__(self, reward_dir: str, max_batch_size: int = 32, batch_wait_timeout_s: float = 0.01,
                 device: str = "auto", torch_threads: int | None = None):
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.core = ScoringCore(reward_dir, device)
        self._max_batch_size = max_batch_size
        self.score_batch.set_max_batch_size(max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._hist = Histogram("copl_scorer_batch_size", description="requests scored by one forward",
                               boundaries=BATCH_BOUNDARIES)
        self._forward = ForwardCoalescer(self.core.score, max_batch_size, on_forward=self._hist.observe)
        self._batches, self._requests, self._max_batch = 0, 0, 0

    # max_concurrent_batches: how many cut batches may wait together and so join one forward
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, max_concurrent_batches=16)
    async def score_batch(self, items: list[ScoreItem]) -> list[list[float]]:
        self._batches += 1
        self._requests += len(items)
        self._max_batch = max(self._max_batch, len(items))
        return await self._forward.submit(items)

    async def score(self, item: ScoreItem) -> list[float]:
        return await self.score_batch(item)

    def stats(self) -> dict:
        f = self._forward
        return {"method": self.core.method, "device": str(self.core.device), "batches": self._batches,
                "requests": self._requests, "max_batch": self._max_batch, "max_batch_size": self._max_batch_size,
                "forwards": f.forwards, "max_forward": f.max_forward,
                "mean_forward": f.items / f.forwards if f.forwards else 0.0}


def _call(fn, *args) -> tuple[int, dict]:
    """(status, body): RequestError crosses the handle as a plain value, not a wrapped exception."""
    try:
        return 200, fn(*args)
    except RequestError as exc:
        return exc.status, exc.body()


@serve.deployment(max_ongoing_requests=8,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2})
class Onboarding:
    """Eq. 11 adaptation of new users, written to the store before the answer; the survey selector."""

    def __init__(self, gnn_dir: str, dataset: str, store_path: str, limits: dict, adapt: dict | None = None,
                 survey_candidates: int = 4000, seed: int = 0, adapt_dir: str | None = None):
        from copl_ray.embeddings import read_embeddings
        from copl_ray.store import UserStore

        self.store = UserStore(store_path)
        # Users adapted by jobs/adapt_users.py are served from adapt_dir: their ids are taken too.
        reserved = read_embeddings(f"{adapt_dir}/users.parquet", "user_id")[0].to_pylist() if adapt_dir else ()
        self.core = OnboardingCore(gnn_dir, dataset, self.store, Limits(**limits), adapt, survey_candidates, seed,
                                   reserved)
        self._requests = Counter("copl_onboarding_requests", description="onboarding requests",
                                 tag_keys=("op", "outcome"))

    def _count(self, op: str, status: int) -> None:
        self._requests.inc(tags={"op": op, "outcome": "ok" if status < 400 else str(status)})

    def onboard(self, user_id: str, annotations: list) -> tuple[int, dict]:
        status, body = _call(self.core.onboard, user_id, annotations)
        self._count("onboard", status)
        return (201 if status == 200 else status), body

    def add_annotations(self, user_id: str, annotations: list) -> tuple[int, dict]:
        status, body = _call(self.core.add_annotations, user_id, annotations)
        self._count("annotations", status)
        return status, body

    def survey(self, answers: list, n: int) -> tuple[int, dict]:
        status, body = _call(lambda: {"pairs": self.core.survey(answers, n)})
        self._count("survey", status)
        return status, body

    def pid(self) -> int:
        import os

        return os.getpid()


app = FastAPI(title="copl_ray serving", version="1")


@app.exception_handler(RequestError)
async def _request_error(_, exc: RequestError):
    return JSONResponse(exc.body(), status_code=exc.status)


async def _body(request: Request, model: type[BaseModel], limits: Limits):
    """Parse a JSON body into ``model``: 413 over the size limit (read in chunks, never whole),
    422 naming the field for malformed JSON or a wrong type."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise RequestError(413, "body", f"{declared} bytes, at most {limits.max_body_bytes}")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limits.max_body_bytes:
            raise RequestError(413, "body", f"more than {limits.max_body_bytes} bytes")
    try:
        return model.model_validate_json(bytes(data))
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise RequestError(422, field, first["msg"]) from None


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(app)
class Api:
    """HTTP ingress: CONTRACT section 4 (paths, bodies, status codes)."""

    def __init__(self, scorer, onboarding, gnn_dir: str, reward_dir: str, store_path: str, limits: dict,
                 adapt_dir: str | None = None, bearer_token: str | None = None):
        from copl_ray.store import UserStore

        self.scorer, self.onboarding = scorer, onboarding
        self.limits = Limits(**limits)
        self.store = UserStore(store_path)
        self.users = UserDirectory(gnn_dir, reward_dir, self.store, adapt_dir)
        self.token = bearer_token
        self._onboarded = Gauge("copl_onboarded_users", description="users in the user store")
        self._onboarded.set(self.store.count())
        self._started = time.time()

    def _auth(self, request: Request) -> None:
        if not bearer_ok(request.headers.get("authorization"), self.token):
            raise RequestError(401, "authorization", "missing or wrong bearer token")

    def _user_id(self, user_id: str, field: str = "user_id") -> str:
        try:
            check_user_id(field, user_id, self.limits)
        except ValueError as exc:
            raise RequestError(400, field, exc.message) from None
        return user_id

    def _limit(self, field: str, value: str) -> None:
        try:
            check_text(field, value, self.limits)
        except ValueError as exc:
            raise RequestError(400, field, exc.message) from None

    def _who(self, req) -> object:
        if (req.user_id is None) == (req.user_embedding is None):
            raise RequestError(422, "user_id", "give exactly one of user_id and user_embedding")
        if req.user_embedding is not None:
            return self.users.check_embedding(req.user_embedding)
        return self.users.embedding(self._user_id(req.user_id))

    async def _score(self, items: list[ScoreItem]) -> list[list[float]]:
        return await asyncio.gather(*(self.scorer.score.remote(it) for it in items))

    @app.get("/v1/health")
    async def health(self):
        return {"status": "ok", "n_seen_users": self.users.n_seen, "n_onboarded_users": self.store.count(),
                "scorer": await self.scorer.stats.remote(), "uptime_s": time.time() - self._started}

    @app.post("/v1/score")
    async def score(self, request: Request):
        self._auth(request)
        req = await _body(request, ScoreRequest, self.limits)
        if len(req.responses) > self.limits.max_responses:
            raise RequestError(400, "responses", f"{len(req.responses)} responses, at most {self.limits.max_responses}")
        self._limit("prompt", req.prompt)
        for i, r in enumerate(req.responses):
            self._limit(f"responses.{i}", r)
        emb = self._who(req)
        rewards = (await self._score([ScoreItem(emb, req.prompt, req.responses)]))[0]
        return {"user_id": req.user_id, "rewards": rewards}

    @app.post("/v1/compare")
    async def compare(self, request: Request):
        self._auth(request)
        req = await _body(request, CompareRequest, self.limits)
        for f in ("prompt", "response_a", "response_b"):
            self._limit(f, getattr(req, f))
        emb = self._who(req)
        ra, rb = (await self._score([ScoreItem(emb, req.prompt, [req.response_a, req.response_b])]))[0]
        return {"user_id": req.user_id, "p_a_preferred": 1.0 / (1.0 + math.exp(-(ra - rb))),
                "reward_a": ra, "reward_b": rb}

    @app.post("/v1/users", status_code=201)
    async def onboard(self, request: Request):
        self._auth(request)
        req = await _body(request, OnboardRequest, self.limits)
        self._user_id(req.user_id)
        status, body = await self.onboarding.onboard.remote(req.user_id, req.annotations)
        self._onboarded.set(self.store.count())
        return JSONResponse(body, status_code=status)

    @app.post("/v1/users/{user_id}/annotations")
    async def add_annotations(self, user_id: str, request: Request):
        self._auth(request)
        self._user_id(user_id)
        req = await _body(request, AnnotationsRequest, self.limits)
        status, body = await self.onboarding.add_annotations.remote(user_id, req.annotations)
        return JSONResponse(body, status_code=status)

    @app.get("/v1/users/{user_id}")
    async def get_user(self, user_id: str, request: Request):
        self._auth(request)
        return self.users.describe(self._user_id(user_id))

    @app.delete("/v1/users/{user_id}", status_code=204)
    async def delete_user(self, user_id: str, request: Request):
        self._auth(request)
        self._user_id(user_id)
        if self.users.is_seen(user_id):
            raise RequestError(409, "user_id", f"user {user_id!r} is a seen user of the GNN; only onboarded "
                               "users can be deleted")
        if not self.store.delete(user_id):
            raise RequestError(404, "user_id", f"unknown user {user_id!r}")
        self._onboarded.set(self.store.count())
        return Response(status_code=204)

    @app.post("/v1/survey")
    async def survey(self, request: Request):
        self._auth(request)
        req = await _body(request, SurveyRequest, self.limits)
        if not 1 <= req.n <= self.limits.max_survey_pairs:
            raise RequestError(400, "n", f"must be 1..{self.limits.max_survey_pairs}")
        if len(req.answers) > self.limits.max_annotations:
            raise RequestError(400, "answers", f"{len(req.answers)} answers, at most {self.limits.max_annotations}")
        status, body = await self.onboarding.survey.remote(req.answers, req.n)
        return JSONResponse(body, status_code=status)

    async def _get_reward(self, request: Request, path_user: str | None):
        self._auth(request)
        req = await _body(request, RewardRequest, self.limits)
        n = len(req.query)
        if n > self.limits.max_queries:
            raise RequestError(400, "query", f"{n} queries, at most {self.limits.max_queries}")
        for name in ("prompts", "labels"):
            value = getattr(req, name)
            if value is not None and len(value) != n:
                raise RequestError(422, name, f"{len(value)} items for {n} queries")
        if path_user is not None:
            users = [self._user_id(path_user)] * n
            self.users.embedding(path_user)  # 404 for an unknown user, even with an empty query
        else:
            if req.labels is None and n:
                raise RequestError(422, "labels", "this path takes the user of each sample from labels")
            users = []
            for i, label in enumerate(req.labels or []):
                u = label_user(label)
                if u is None:
                    raise RequestError(422, f"labels.{i}", "must be a user id or {\"user_id\": ...}")
                users.append(self._user_id(u, f"labels.{i}"))
        items = []
        for i, q in enumerate(req.query):
            self._limit(f"query.{i}", q)
            prompt, response = split_query(q, req.prompts[i] if req.prompts else None)
            items.append(ScoreItem(self.users.embedding(users[i], f"labels.{i}" if path_user is None else "user_id"),
                                   prompt, [response]))
        rewards = [r[0] for r in await self._score(items)] if items else []
        return {"rewards": rewards, "scores": rewards,
                "extra_logs": {"response_chars": [len(it.responses[0]) for it in items]}}

    @app.post("/v1/users/{user_id}/get_reward")
    async def get_reward(self, user_id: str, request: Request):
        return await self._get_reward(request, user_id)

    @app.post("/v1/get_reward")
    async def get_reward_by_label(self, request: Request):
        return await self._get_reward(request, None)
