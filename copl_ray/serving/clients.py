"""Clients of the serving app for RLHF frameworks that take Python callables (standard library only).

* TRL (``GRPOTrainer(reward_funcs=[...])``): `trl_reward_func(url)` returns
  ``f(prompts, completions, **columns) -> list[float]``; the user of each sample is the dataset's
  ``user_id`` column (or a fixed ``user_id``). Conversational prompts/completions (lists of
  ``{"role", "content"}``) are reduced to the last user turn and the assistant's text.
* veRL (``custom_reward_function``): `verl_compute_score` is
  ``compute_score(data_source, solution_str, ground_truth, extra_info=None, url=..., ...) -> float``
  (set ``url`` through ``custom_reward_function.reward_kwargs``); the user is ``extra_info["user_id"]``
  or ``ground_truth``; the prompt ``extra_info["prompt"]`` when given.

OpenRLHF needs no client: it POSTs to ``/v1/users/{user_id}/get_reward`` (or ``/v1/get_reward`` with
the user in ``labels``) itself.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

__all__ = ["ServeClient", "trl_reward_func", "verl_compute_score"]


class ServeClient:
    """Minimal JSON client: ``score(user_id, prompt, responses) -> list[float]``; retries 5xx only."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0, retries: int = 3):
        self.url, self.token, self.timeout, self.retries = url.rstrip("/"), token, timeout, retries

    def post(self, path: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url + path, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                if exc.code < 500 or attempt == self.retries:  # a 4xx is the caller's to fix: no retry
                    raise RuntimeError(f"POST {path}: {exc.code} {exc.read().decode(errors='replace')}") from None
            time.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")

    def score(self, user_id: str, prompt: str, responses: list[str]) -> list[float]:
        return self.post("/v1/score", {"user_id": user_id, "prompt": prompt, "responses": responses})["rewards"]


def _text(x: Any, role: str) -> str:
    """A plain string, or the content of the last ``role`` turn of a conversation."""
    if isinstance(x, str):
        return x
    if isinstance(x, list):
        turns = [t.get("content", "") for t in x if isinstance(t, dict) and t.get("role") == role]
        return turns[-1] if turns else " ".join(str(t.get("content", "")) for t in x if isinstance(t, dict))
    return str(x)


def trl_reward_func(url: str, user_id: str | None = None, user_column: str = "user_id", token: str | None = None,
                    max_workers: int = 8) -> Callable[..., list[float]]:
    """A TRL reward function scoring each (prompt, completion) for its user.

    Samples of one (user, prompt) go in one request; requests run concurrently so the server's
    ``@serve.batch`` gathers them into shared forwards.
    """
    client = ServeClient(url, token)

    def copl_reward(prompts: list, completions: list, **columns) -> list[float]:
        users = [user_id] * len(prompts) if user_id is not None else columns.get(user_column)
        if users is None:
            raise ValueError(f"no user: pass user_id= or give the dataset a {user_column!r} column")
        groups: dict = {}
        for i, (u, p, c) in enumerate(zip(users, prompts, completions)):
            groups.setdefault((u, _text(p, "user")), []).append((i, _text(c, "assistant")))
        out = [0.0] * len(prompts)
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            futures = {key: pool.submit(client.score, key[0], key[1], [c for _, c in rows])
                       for key, rows in groups.items()}
            for key, rows in groups.items():
                for (i, _), r in zip(rows, futures[key].result()):
                    out[i] = r
        return out

    copl_reward.__name__ = "copl_reward"  # TRL logs each reward function by name
    return copl_reward


def verl_compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                       url: str = "http://127.0.0.1:8000", token: str | None = None, **_: Any) -> float:
    """veRL's ``compute_score``: the reward of ``solution_str`` for the sample's user."""
    info = extra_info or {}
    user = info.get("user_id") or (ground_truth if isinstance(ground_truth, str) else None)
    if not user:
        raise ValueError("no user: put user_id in extra_info (or the user id as ground_truth)")
    return ServeClient(url, token).score(user, str(info.get("prompt", "")), [solution_str])[0]
