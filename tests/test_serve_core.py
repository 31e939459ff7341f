"""The serving logic without Serve: batched scoring, user lookup, onboarding, survey, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from copl_ray.reward.artifacts import write_manifest
from copl_ray.reward.encoding import TextEncoding
from copl_ray.reward.model import PersonalRewardModel, RewardModelConfig, save_reward_model
from copl_ray.serving.core import OnboardingCore, RequestError, ScoreItem, ScoringCore, UserDirectory, dataset_of
from copl_ray.serving.protocol import Annotation, Limits
from copl_ray.store import UserStore
from tests.serve_helpers import DIM, write_stand_in_gnn
from tests.test_reward_model import _perturb_adapters
from tests.test_train_reward import make_two_group_dataset


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("core")
    data = make_two_group_dataset(root / "data", n_users=20, n_prompts=10)
    gnn = write_stand_in_gnn(data, root / "gnn")
    torch.manual_seed(0)
    rm = PersonalRewardModel(RewardModelConfig(backbone="tiny-llama", user_dim=DIM, num_experts=2))
    _perturb_adapters(rm)
    save_reward_model(rm, root / "reward" / "model", encoding=TextEncoding(max_length=40))
    write_manifest(root / "reward", "copl", str(gnn), TextEncoding(max_length=40))
    return {"data": data, "gnn": gnn, "reward": root / "reward", "root": root}


def A(c, r, p=None):
    return Annotation(chosen_id=c, rejected_id=r, prompt_id=p)


def test_one_forward_scores_every_item_as_alone(parts):
    core = ScoringCore(parts["reward"], device="cpu")
    rng = np.random.default_rng(0)
    items = [ScoreItem(rng.normal(size=DIM).astype(np.float32), f"prompt {i}", [f"answer {j} " * (i + 1)
             for j in range(1 + i % 3)]) for i in range(5)]
    together = core.score(items)
    assert [len(x) for x in together] == [1, 2, 3, 1, 2]
    for item, got in zip(items, together):
        np.testing.assert_allclose(got, core.score([item])[0], atol=1e-5)  # padding/batch neighbours change nothing
    assert core.score([ScoreItem(items[0].embedding, "p", [])]) == [[]]


def test_onboarding_core_writes_before_returning_and_refuses_bad_input(parts, tmp_path):
    store = UserStore(tmp_path / "users.db")
    limits = Limits(max_annotations=3)
    core = OnboardingCore(str(parts["gnn"]), str(parts["data"]), store, limits, survey_candidates=50)
    users = UserDirectory(str(parts["gnn"]), str(parts["reward"]), store)
    out = core.onboard("new", [A("p0s", "p0l"), A("p1s", "p1l", "p1")])
    assert out["n_annotations"] == 2 and store.get("new") is not None  # on disk at return
    assert store.annotations("new") == [("p0s", "p0l", "p0"), ("p1s", "p1l", "p1")]  # prompt filled in
    np.testing.assert_array_equal(users.embedding("new"), store.get("new").embedding)
    before = store.snapshot()
    cases = [
        (lambda: core.onboard("new", [A("p0s", "p0l")]), 409, "user_id"),
        (lambda: core.onboard("u0", [A("p0s", "p0l")]), 409, "user_id"),
        (lambda: core.onboard("x", [A("nope", "p0l")]), 400, "annotations"),
        (lambda: core.onboard("x", [A("p0s", "p0s")]), 400, "annotations"),
        (lambda: core.onboard("x", [A("p0s", "p0l", "p5")]), 400, "annotations[0].prompt_id"),
        (lambda: core.onboard("x", [A("p0s", "p0l")] * 4), 400, "annotations"),
        (lambda: core.add_annotations("new", [A("p2s", "p2l"), A("p3s", "p3l")]), 400, "annotations"),  # 4 > 3
        (lambda: core.add_annotations("ghost", [A("p2s", "p2l")]), 404, "user_id"),
        (lambda: users.embedding("ghost"), 404, "user_id"),
    ]
    for call, status, field in cases:
        with pytest.raises(RequestError) as exc:
            call()
        assert (exc.value.status, exc.value.field) == (status, field), exc.value
    assert store.snapshot() == before  # no bad request wrote anything
    assert "chosen_id" in str(pytest.raises(RequestError, core.onboard, "x", [A("nope", "p0l")]).value)
    grown = core.add_annotations("new", [A("p2l", "p2s")])
    assert grown["n_annotations"] == 3 and store.get("new").updated_at >= store.get("new").created_at


def test_survey_pairs_are_new_same_prompt_pairs_with_texts(parts, tmp_path):
    core = OnboardingCore(str(parts["gnn"]), str(parts["data"]), UserStore(tmp_path / "u.db"), Limits())
    first = core.survey([], 3)
    assert len(first) == 3
    for p in first:
        assert p["response_a_id"][:-1] == p["response_b_id"][:-1] == p["prompt_id"]  # same prompt
        assert p["prompt"].startswith("post ") and p["response_a"] and p["response_b"]
    answers = [A(p["response_a_id"], p["response_b_id"]) for p in first]
    again = core.survey(answers, 20)
    assert not {(p["response_a_id"], p["response_b_id"]) for p in again} & \
        {(p["response_a_id"], p["response_b_id"]) for p in first}
    with pytest.raises(RequestError) as exc:
        core.survey([A("nope", "p0s")], 2)
    assert exc.value.status == 400 and exc.value.field == "answers"


def test_dataset_of_reads_the_gnn_config(parts, tmp_path):
    assert dataset_of(parts["gnn"]) == str(parts["data"])
    with pytest.raises(FileNotFoundError, match="dataset="):
        dataset_of(tmp_path)


def test_coalescer_merges_batches_that_wait_for_the_model():
    import asyncio
    import threading
    import time as _time

    from copl_ray.serving.core import ForwardCoalescer

    sizes = []
    started = threading.Event()

    def forward(items):
        sizes.append(len(items))
        started.set()
        _time.sleep(0.2)  # a slow model: the other callers arrive meanwhile
        if "boom" in items:
            raise RuntimeError("model failed")
        return [x * 10 for x in items]

    async def main():
        co = ForwardCoalescer(forward, max_items=4, on_forward=lambda n: None)
        first = asyncio.create_task(co.submit([0]))
        await asyncio.to_thread(started.wait)
        rest = [asyncio.create_task(co.submit([i, i + 100])) for i in range(1, 4)]  # 6 items wait
        out = [await first] + [await t for t in rest]
        bad = asyncio.create_task(co.submit(["boom"]))
        with pytest.raises(RuntimeError, match="model failed"):
            await bad
        return co, out

    co, out = asyncio.run(main())
    assert out == [[0], [10, 1010], [20, 1020], [30, 1030]]  # each caller gets its own, in order
    assert sizes[:3] == [1, 4, 2]  # the waiting batches join the next forwards, at most 4 at a time
    assert co.forwards == 4 and co.max_forward == 4
