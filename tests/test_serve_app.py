"""The Serve app over real HTTP on loopback: one app (tiny artifacts from the real jobs) per module.

Covers CONTRACT section 4 endpoint by endpoint, a served reward against evaluate's own scoring,
OpenRLHF's client code (separate venv), the TRL/veRL clients, ~100 malformed requests, batching,
autoscaling of onboarding, and a user that survives a SIGKILL of the replicas holding the store.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration
requests = pytest.importorskip("requests")

ROOT = Path(__file__).resolve().parents[1]
ORLHF_PY = ROOT / ".venv-openrlhf" / "bin" / "python"
APP = "copl_test"


@pytest.fixture(scope="module")
def live(ray_session, tmp_path_factory):
    from ray import serve

    from copl_ray.serving.app import AppArgs, run_app
    from tests.serve_helpers import app_args, build_artifacts, free_port, wait_healthy

    root = tmp_path_factory.mktemp("serve")
    art = build_artifacts(root)
    port = free_port()
    args = AppArgs.model_validate(app_args(art, root / "users.db", port))
    run_app(args, name=APP)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    yield {**art, "url": url, "store_path": root / "users.db", "args": args}
    serve.delete(APP)
    serve.shutdown()


def post(live, path, body=None, **kw):
    return requests.post(live["url"] + path, json=body, timeout=120, **kw)


def texts(live, response_id: str) -> tuple[str, str]:
    from copl_ray.reward.data import response_texts

    p, r = response_texts(live["dataset"], [response_id])
    return p[0], r[0]


def test_health_score_compare(live):
    h = requests.get(live["url"] + "/v1/health", timeout=30)
    assert h.status_code == 200 and h.headers["content-type"] == "application/json"
    assert h.json()["status"] == "ok" and h.json()["n_seen_users"] == 40
    prompt, short = texts(live, "p0s")
    _, long_ = texts(live, "p0l")
    s = post(live, "/v1/score", {"user_id": "u0", "prompt": prompt, "responses": [short, long_, short]})
    assert s.status_code == 200 and s.headers["content-type"] == "application/json"
    r = s.json()["rewards"]
    assert s.json()["user_id"] == "u0" and len(r) == 3 and r[0] == pytest.approx(r[2], abs=1e-5)
    c = post(live, "/v1/compare", {"user_id": "u0", "prompt": prompt, "response_a": short, "response_b": long_})
    assert c.status_code == 200
    assert c.json()["p_a_preferred"] == pytest.approx(1 / (1 + math.exp(-(r[0] - r[1]))), abs=1e-4)
    # the user matters: u0 ("short" group) and u1 ("long") get different rewards for the same text
    other = post(live, "/v1/score", {"user_id": "u1", "prompt": prompt, "responses": [short, long_]}).json()
    assert not np.allclose(other["rewards"], r[:2], atol=1e-4)
    assert post(live, "/v1/score", {"user_id": "nobody", "prompt": "p", "responses": ["a"]}).status_code == 404


def test_served_reward_equals_evaluate(live):
    """The reward evaluate computes (its model table + tokenize_responses + score_pairs) for test
    pairs of seen users equals /v1/score on the same user and raw texts."""
    from copl_ray.reward.artifacts import load_reward_dir
    from copl_ray.reward.data import PairDataset, load_pairs, tokenize_responses
    from copl_ray.eval.reward_metrics import score_pairs
    from copl_ray.runtime import load_job

    evaluate = load_job("evaluate")
    cfg = evaluate.EvaluateConfig(dataset=str(live["dataset"]), reward_dir=str(live["reward_dir"]),
                                  output_dir="unused")
    rd = load_reward_dir(cfg.reward_dir)
    model = evaluate._models(cfg, rd)[None]
    pairs = load_pairs(live["dataset"], "test", max_pairs=6, seed=1)
    tokens = tokenize_responses(live["dataset"], list(pairs.chosen_id) + list(pairs.rejected_id),
                                model.rm.tokenizer, encoding=rd.encoding)
    chosen, rejected, _ = score_pairs(model, PairDataset.from_pairs(pairs, model.user_ids, tokens), tokens, 4)
    for i in range(len(pairs)):
        prompt, c_text = texts(live, pairs.chosen_id[i])
        _, r_text = texts(live, pairs.rejected_id[i])
        got = post(live, "/v1/score", {"user_id": pairs.user_id[i], "prompt": prompt,
                                       "responses": [c_text, r_text]}).json()["rewards"]
        np.testing.assert_allclose(got, [chosen[i], rejected[i]], atol=1e-4)


def test_onboard_survey_get_delete(live):
    survey = post(live, "/v1/survey", {"answers": [], "n": 3})
    assert survey.status_code == 200
    pairs = survey.json()["pairs"]
    assert len(pairs) == 3 and len({(p["response_a_id"], p["response_b_id"]) for p in pairs}) == 3
    assert all(p["prompt"] and p["response_a"] and p["response_b"] for p in pairs)
    # a new user of the "short" group answers the survey pairs: chooses the shorter response
    ans = [{"chosen_id": min((p["response_a_id"], p["response_b_id"]), key=lambda x: not x.endswith("s")),
            "rejected_id": min((p["response_a_id"], p["response_b_id"]), key=lambda x: x.endswith("s"))}
           for p in pairs]
    nxt = post(live, "/v1/survey", {"answers": ans, "n": 2}).json()["pairs"]
    asked = {frozenset((a["chosen_id"], a["rejected_id"])) for a in ans}
    assert nxt and not any(frozenset((p["response_a_id"], p["response_b_id"])) in asked for p in nxt)
    created = post(live, "/v1/users", {"user_id": "newbie", "annotations": ans})
    assert created.status_code == 201, created.text
    assert created.json()["user_id"] == "newbie"
    assert created.json()["resolution"] in ("khop", "widened", "global_sample")
    assert post(live, "/v1/users", {"user_id": "newbie", "annotations": ans}).status_code == 409
    assert post(live, "/v1/users", {"user_id": "u3", "annotations": ans}).status_code == 409  # a seen user
    prompt, short = texts(live, "p1s")
    scored = post(live, "/v1/score", {"user_id": "newbie", "prompt": prompt, "responses": [short]})
    assert scored.status_code == 200 and len(scored.json()["rewards"]) == 1  # scorable at once
    got = requests.get(live["url"] + "/v1/users/newbie", timeout=30).json()
    assert got["source"] == "onboarded" and got["n_annotations"] == 3
    grown = post(live, "/v1/users/newbie/annotations", {"annotations": [{"chosen_id": "p2s", "rejected_id": "p2l"}]})
    assert grown.status_code == 200 and grown.json()["n_annotations"] == 4
    seen = requests.get(live["url"] + "/v1/users/u0", timeout=30).json()
    assert seen["source"] == "seen" and seen["n_annotations"] == 0
    assert requests.delete(live["url"] + "/v1/users/u0", timeout=30).status_code == 409
    assert requests.delete(live["url"] + "/v1/users/newbie", timeout=30).status_code == 204
    assert requests.get(live["url"] + "/v1/users/newbie", timeout=30).status_code == 404
    assert requests.delete(live["url"] + "/v1/users/newbie", timeout=30).status_code == 404
    assert post(live, "/v1/score", {"user_id": "newbie", "prompt": "p", "responses": ["a"]}).status_code == 404


def test_openrlhf_protocol(live):
    """The details OpenRLHF relies on, sent as it sends them (aiohttp POST, json=payload)."""
    prompt, short = texts(live, "p3s")
    want = post(live, "/v1/score", {"user_id": "u2", "prompt": prompt, "responses": [short]}).json()["rewards"][0]
    url = live["url"] + "/v1/users/u2/get_reward"
    empty = post(live, "/v1/users/u2/get_reward", {"query": []})
    assert empty.status_code == 200
    assert empty.json() == {"rewards": [], "scores": [], "extra_logs": {"response_chars": []}}
    q = f"<s>Human: {prompt} Assistant: {short}</s>"  # 0.4: query only, our template, BOS/EOS text
    one = requests.post(url, json={"query": [q]}, timeout=60).json()
    assert one["rewards"][0] == pytest.approx(want, abs=1e-4) and one["scores"] == one["rewards"]
    chat_prompt = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    both = requests.post(url, json={"query": [chat_prompt + short + "<|im_end|>", q],
                                    "prompts": [chat_prompt, f"Human: {prompt}"], "labels": ["x", "y"]},
                         timeout=60).json()
    assert both["rewards"] == pytest.approx([want, want], abs=1e-4)
    assert all(len(v) == 2 for v in both["extra_logs"].values())
    per_sample = post(live, "/v1/get_reward", {"query": [q, q], "labels": ["u2", {"user_id": "u3"}]}).json()
    assert per_sample["rewards"][0] == pytest.approx(want, abs=1e-4) and len(per_sample["rewards"]) == 2
    assert post(live, "/v1/users/ghost/get_reward", {"query": [q]}).status_code == 404
    assert post(live, "/v1/get_reward", {"query": [q], "labels": ["ghost"]}).status_code == 404
    assert post(live, "/v1/get_reward", {"query": [q]}).status_code == 422  # no labels: no user


def test_openrlhf_client_code(live):
    """OpenRLHF 0.11.2's own SingleTurnAgentExecutor (separate venv) gets the served rewards."""
    if not ORLHF_PY.is_file():
        pytest.skip("no .venv-openrlhf: `make test` builds it (openrlhf --no-deps + aiohttp)")
    prompt, short = texts(live, "p4s")
    want = post(live, "/v1/score", {"user_id": "u5", "prompt": prompt, "responses": [short]}).json()["rewards"][0]
    case = {"url": live["url"] + "/v1/users/u5/get_reward", "queries": [f"Human: {prompt} Assistant: {short}</s>"],
            "prompts": [f"Human: {prompt}"], "labels": [None], "generation": f" Assistant: {short}</s>"}
    out = subprocess.run([str(ORLHF_PY), str(ROOT / "tests" / "openrlhf_client.py"), json.dumps(case)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["fetch"][0]["rewards"] == pytest.approx([want], abs=1e-4)
    assert res["execute"]["reward"] == pytest.approx([want], abs=1e-4)


def test_trl_and_verl_clients(live):
    from copl_ray.serving.clients import trl_reward_func, verl_compute_score

    prompt, short = texts(live, "p5s")
    _, long_ = texts(live, "p5l")
    want = post(live, "/v1/score", {"user_id": "u6", "prompt": prompt, "responses": [short, long_]}).json()["rewards"]
    want7 = post(live, "/v1/score", {"user_id": "u7", "prompt": prompt, "responses": [short]}).json()["rewards"]
    f = trl_reward_func(live["url"])
    got = f([prompt, [{"role": "user", "content": prompt}], prompt],
            [short, [{"role": "assistant", "content": long_}], short], user_id=["u6", "u6", "u7"])
    assert got == pytest.approx([want[0], want[1], want7[0]], abs=1e-4) and f.__name__ == "copl_reward"
    v = verl_compute_score("copl", short, None, {"user_id": "u6", "prompt": prompt}, url=live["url"])
    assert v == pytest.approx(want[0], abs=1e-4)
    with pytest.raises(RuntimeError, match="404"):
        verl_compute_score("copl", short, "ghost", url=live["url"])


def _malformed_cases() -> list[tuple]:
    """(method, path, body bytes or JSON, headers) of ~100 requests that must each get a 4xx."""
    ok_ann = {"chosen_id": "p0s", "rejected_id": "p0l"}
    big = "x" * 20_001
    cases = []
    raw = [b"", b"{", b"[]", b"null", b"42", b"\"str\"", b"{\"user_id\": }", b"\xff\xfe", b"{'a': 1}", b"[1, 2"]
    for path in ("/v1/score", "/v1/compare", "/v1/users", "/v1/survey", "/v1/users/u0/get_reward",
                 "/v1/users/newbie2/annotations"):
        cases += [("POST", path, body, None) for body in raw]
    score_bodies = [
        {}, {"user_id": "u0"}, {"user_id": "u0", "prompt": "p"}, {"user_id": 5, "prompt": "p", "responses": ["a"]},
        {"user_id": "u0", "prompt": 1, "responses": ["a"]}, {"user_id": "u0", "prompt": "p", "responses": "a"},
        {"user_id": "u0", "prompt": "p", "responses": [1]}, {"user_id": "u0", "prompt": "p", "responses": [None]},
        {"user_id": "u0", "prompt": "p", "responses": ["a"] * 65}, {"user_id": "u0", "prompt": big, "responses": ["a"]},
        {"user_id": "u0", "prompt": "p", "responses": [big]}, {"user_id": "ghost", "prompt": "p", "responses": ["a"]},
        {"user_id": "", "prompt": "p", "responses": ["a"]}, {"user_id": " u0", "prompt": "p", "responses": ["a"]},
        {"user_id": "u0", "prompt": "p", "responses": ["a"], "extra": 1},
        {"user_embedding": [1.0], "prompt": "p", "responses": ["a"]},
        {"user_id": "u0", "user_embedding": [0.0] * 8, "prompt": "p", "responses": ["a"]},
        {"prompt": "p", "responses": ["a"]}, {"user_id": ["u0"], "prompt": "p", "responses": ["a"]},
        {"user_id": "u" * 300, "prompt": "p", "responses": ["a"]},
    ]
    cases += [("POST", "/v1/score", b, None) for b in score_bodies]
    compare_bodies = [{}, {"user_id": "u0", "prompt": "p", "response_a": "a"},
                      {"user_id": "u0", "prompt": "p", "response_a": 1, "response_b": "b"},
                      {"user_id": "ghost", "prompt": "p", "response_a": "a", "response_b": "b"},
                      {"user_id": "u0", "prompt": "p", "response_a": big, "response_b": "b"}]
    cases += [("POST", "/v1/compare", b, None) for b in compare_bodies]
    users_bodies = [
        {}, {"user_id": "newbie2"}, {"user_id": "newbie2", "annotations": {}},
        {"user_id": "newbie2", "annotations": [{}]},
        {"user_id": "newbie2", "annotations": [{"chosen_id": "p0s"}]},
        {"user_id": "newbie2", "annotations": [{"chosen_id": "nope", "rejected_id": "p0l"}]},
        {"user_id": "newbie2", "annotations": [{"chosen_id": "p0s", "rejected_id": "p0s"}]},
        {"user_id": "newbie2", "annotations": [{"chosen_id": 1, "rejected_id": "p0l"}]},
        {"user_id": "newbie2", "annotations": [ok_ann] * 257},
        {"user_id": "newbie2", "annotations": [{**ok_ann, "prompt_id": "p7"}]},
        {"user_id": "u0", "annotations": [ok_ann]}, {"user_id": "", "annotations": [ok_ann]},
        {"user_id": 7, "annotations": [ok_ann]},
        {"user_id": "newbie2", "annotations": [ok_ann, {"chosen_id": "p1s", "rejected_id": "zz"}]},
    ]
    cases += [("POST", "/v1/users", b, None) for b in users_bodies]
    cases += [("POST", "/v1/users/ghost/annotations", {"annotations": [ok_ann]}, None),
              ("POST", "/v1/users/u0/annotations", {"annotations": [ok_ann]}, None),
              ("POST", "/v1/users/ghost/annotations", {"annotations": "x"}, None)]
    survey_bodies = [{"n": 0}, {"n": 33}, {"n": "4"}, {"n": 2.5}, {"answers": {}}, {"answers": [{"chosen_id": "nope",
                     "rejected_id": "p0l"}]}, {"answers": [ok_ann], "n": -1}, {"answers": [ok_ann] * 257}]
    cases += [("POST", "/v1/survey", b, None) for b in survey_bodies]
    reward_bodies = [{}, {"query": "a"}, {"query": [1]}, {"query": ["a"], "prompts": ["a", "b"]},
                     {"query": ["a"], "labels": []}, {"query": [big]}, {"query": ["a"] * 257}]
    cases += [("POST", "/v1/users/u0/get_reward", b, None) for b in reward_bodies]
    cases += [("POST", "/v1/get_reward", {"query": ["a"], "labels": [3]}, None),
              ("POST", "/v1/get_reward", {"query": ["a"], "labels": ["ghost"]}, None)]
    cases += [("GET", "/v1/users/ghost", None, None), ("DELETE", "/v1/users/ghost", None, None),
              ("GET", "/v1/nothing", None, None), ("PUT", "/v1/score", {}, None), ("GET", "/v1/score", None, None),
              ("POST", "/v1/score", b"{" + b" " * 1_100_000 + b"}", None)]
    return cases


def test_malformed_requests_get_4xx_and_change_nothing(live):
    from copl_ray.store import UserStore

    store = UserStore(live["store_path"])
    before = store.snapshot()
    cases = _malformed_cases()
    assert len(cases) >= 100
    bad = []
    for method, path, body, headers in cases:
        kw = {"data": body} if isinstance(body, bytes) else ({"json": body} if body is not None else {})
        r = requests.request(method, live["url"] + path, timeout=60, headers=headers, **kw)
        ok = 400 <= r.status_code < 500 and r.headers.get("content-type", "").startswith("application/json")
        if not ok:
            bad.append((method, path, str(body)[:80], r.status_code, r.text[:200]))
        elif r.status_code in (400, 413, 422) and "field" in r.json():
            assert r.json()["field"], (path, body)
    assert not bad, bad
    assert store.snapshot() == before
    too_big = requests.post(live["url"] + "/v1/score", data=b"{" + b" " * 1_100_000 + b"}", timeout=60)
    assert too_big.status_code == 413 and too_big.json()["field"] == "body"
    typed = post(live, "/v1/survey", {"n": "4"})
    assert typed.status_code == 422 and typed.json()["field"] == "n"
    unknown = post(live, "/v1/users", {"user_id": "newbie2",
                                       "annotations": [{"chosen_id": "nope", "rejected_id": "p0l"}]})
    assert unknown.status_code == 400 and "chosen_id" in unknown.json()["error"]


def test_concurrent_requests_share_forwards(live):
    prompt, short = texts(live, "p6s")
    body = lambda u: {"user_id": f"u{u}", "prompt": prompt, "responses": [short]}  # noqa: E731
    alone = {u: post(live, "/v1/score", body(u)).json()["rewards"][0] for u in range(8)}
    before = requests.get(live["url"] + "/v1/health", timeout=30).json()["scorer"]
    with ThreadPoolExecutor(24) as pool:
        got = list(pool.map(lambda i: (i % 8, post(live, "/v1/score", body(i % 8)).json()["rewards"][0]), range(48)))
    after = requests.get(live["url"] + "/v1/health", timeout=30).json()["scorer"]
    assert all(r == pytest.approx(alone[u], abs=1e-4) for u, r in got)  # batch neighbours change nothing
    assert after["requests"] - before["requests"] == 48
    assert after["forwards"] - before["forwards"] < 48 and after["max_forward"] > 1  # shared forwards


def test_onboarding_autoscales_past_its_target(live):
    """target_ongoing_requests=1 (test args): 16 clients surveying without pause start a 2nd replica."""
    import threading

    from tests.serve_helpers import replica_pids

    assert len(replica_pids(APP, "Onboarding")) == 1
    done = threading.Event()
    deadline = time.monotonic() + 90
    body = {"answers": [{"chosen_id": "p0s", "rejected_id": "p0l"}], "n": 4}

    def client(_):
        codes = set()
        while not done.is_set() and time.monotonic() < deadline:
            codes.add(post(live, "/v1/survey", body).status_code)
        return codes

    n = 1
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(client, i) for i in range(16)]
        try:
            while time.monotonic() < deadline and n < 2:
                time.sleep(1)
                n = len(replica_pids(APP, "Onboarding"))
        finally:
            done.set()
        codes = set().union(*(f.result() for f in futures))
    assert n >= 2, "onboarding did not scale out within 90 s"
    assert codes == {200}


def test_onboarded_user_survives_sigkill_of_the_replicas(live):
    from tests.serve_helpers import replica_pids, sigkill, wait_healthy

    ann = [{"chosen_id": "p7s", "rejected_id": "p7l"}, {"chosen_id": "p8s", "rejected_id": "p8l"}]
    assert post(live, "/v1/users", {"user_id": "durable", "annotations": ann}).status_code == 201
    prompt, short = texts(live, "p9s")
    body = {"user_id": "durable", "prompt": prompt, "responses": [short]}
    before = post(live, "/v1/score", body).json()["rewards"]
    # Every process that holds the store dies (the Scorer keeps only the model: left running,
    # which also keeps this test short).
    pids = replica_pids(APP, "Api") + replica_pids(APP, "Onboarding")
    assert len(pids) >= 2
    sigkill(pids)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and set(replica_pids(APP)) & set(pids):
        time.sleep(0.5)
    wait_healthy(live["url"], timeout=150)
    assert not set(replica_pids(APP)) & set(pids)  # every killed replica is a new process
    got = requests.get(live["url"] + "/v1/users/durable", timeout=60)
    assert got.status_code == 200 and got.json()["n_annotations"] == 2
    assert post(live, "/v1/score", body).json()["rewards"] == pytest.approx(before, abs=1e-5)


def test_bearer_token_guards_every_endpoint_but_health(live):
    """The same app redeployed with ``bearer_token`` (Serve replaces the ingress replica in place),
    then back without it: no or a wrong token -> 401 naming the field, nothing stored; the right
    token -> the normal answer; health stays open (load balancers probe it)."""
    from copl_ray.serving.app import run_app
    from copl_ray.store import UserStore

    token = "s3cret-token-for-tests"
    prompt, short = texts(live, "p0s")
    score = {"user_id": "u0", "prompt": prompt, "responses": [short]}
    onboard = {"user_id": "guarded_newbie", "annotations": [{"chosen_id": "p0s", "rejected_id": "p0l"}]}
    store = UserStore(live["store_path"])
    run_app(live["args"].model_copy(update={"bearer_token": token}), name=APP)
    try:
        before = store.snapshot()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            for method, path, body in (("POST", "/v1/score", score), ("POST", "/v1/users", onboard),
                                       ("GET", "/v1/users/u0", None), ("DELETE", "/v1/users/u0", None),
                                       ("POST", "/v1/survey", {"answers": [], "n": 2}),
                                       ("POST", "/v1/users/u0/get_reward", {"query": ["x"]})):
                r = requests.request(method, live["url"] + path, json=body, headers=headers, timeout=60)
                assert r.status_code == 401 and r.json()["field"] == "authorization", (method, path, headers, r.text)
        assert store.snapshot() == before
        auth = {"Authorization": f"Bearer {token}"}
        ok = post(live, "/v1/score", score, headers=auth)
        assert ok.status_code == 200 and len(ok.json()["rewards"]) == 1
        assert requests.get(live["url"] + "/v1/health", timeout=30).status_code == 200
    finally:
        run_app(live["args"], name=APP)
    assert post(live, "/v1/score", score).status_code == 200  # open again for the other tests
