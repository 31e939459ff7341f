"""`make demo`'s last step: serve the pipeline's CoPL reward model and score one response for two
users of opposite groups over real HTTP, then stop.

    python scripts/demo_serve.py PIPELINE_OUTPUT_DIR [port]

Starts the Serve app of CONTRACT section 4 on 127.0.0.1 and takes up to ``N_PAIRS`` held-out test
pairs on which two seen users of different groups chose differently (each pair: one user chose A
over B, the other B over A). POSTs each pair to ``/v1/score`` for both users, prints on how many
the served rewards follow both users' own choices, shows the first such pair (the first pair when
there is none) with both rewards and a curl line, shuts Serve down, and prints the ``serve run``
command that keeps the app up.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.compute as pc  # noqa: E402

from copl_ray.data.dataset import read_annotations, read_table  # noqa: E402
from copl_ray.runtime import init_ray  # noqa: E402
from copl_ray.serving.app import AppArgs, run_app  # noqa: E402


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def _wait_healthy(base: str, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"{base}/v1/health", timeout=10) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"error: the app at {base} did not become healthy within {timeout:.0f} s")


N_PAIRS = 20


def pick_demo(dataset: Path, n: int = N_PAIRS) -> list[tuple[dict, dict, dict]]:
    """Up to ``n`` (user of one group, user of another, a test pair the first chose as a over b and
    the second as b over a), distinct pairs, in file order."""
    test = read_annotations(dataset, "test").to_pandas()
    groups = read_table(dataset, "users").to_pandas().set_index("user_id")["group"]
    test["group"] = groups.loc[test["user_id"]].to_numpy()
    both = test.merge(test, left_on=["chosen_id", "rejected_id"], right_on=["rejected_id", "chosen_id"],
                      suffixes=("_a", "_b"))
    both = both[both["group_a"] != both["group_b"]].drop_duplicates(["chosen_id_a", "rejected_id_a"])
    if both.empty:
        raise SystemExit("error: no test pair on which two users of different groups disagree")
    return [({"user_id": r["user_id_a"], "group": r["group_a"]}, {"user_id": r["user_id_b"], "group": r["group_b"]},
             {"prompt_id": r["prompt_id_a"], "a": r["chosen_id_a"], "b": r["rejected_id_a"]})
            for _, r in both.head(n).iterrows()]


def main() -> None:
    out = Path(sys.argv[1]).resolve()
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8000
    dataset = out / "data"
    args = AppArgs(gnn_dir=str(out / "gnn"), reward_dir=str(out / "reward_copl"), adapt_dir=str(out / "adapt"),
                   store_path=str(out / "serve" / "users.sqlite"), dataset=str(dataset), port=port)
    (out / "serve").mkdir(exist_ok=True)
    cases = pick_demo(dataset)
    prompts = read_table(dataset, "prompts")
    responses = read_table(dataset, "responses")
    text = lambda table, key, value: table.filter(pc.equal(table.column(key), value)).column("text")[0].as_py()  # noqa: E731

    init_ray()
    from ray import serve

    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    run_app(args)
    _wait_healthy(base)
    print(f"[demo] Serve app up at {base} in {time.perf_counter() - t0:.0f} s", flush=True)
    scored = []  # (users, texts, rewards of user a, rewards of user b, both follow their own choice)
    for user_a, user_b, pair in cases:
        prompt = text(prompts, "prompt_id", pair["prompt_id"])
        texts = [text(responses, "response_id", pair["a"]), text(responses, "response_id", pair["b"])]
        ra, rb = (_post(f"{base}/v1/score", {"user_id": u["user_id"], "prompt": prompt, "responses": texts})["rewards"]
                  for u in (user_a, user_b))
        scored.append(((user_a, user_b), (prompt, *texts), ra, rb, ra[0] > ra[1] and rb[1] > rb[0]))
    n_follow = sum(s[-1] for s in scored)
    print(f"[demo] {len(scored)} test pairs on which two users of different groups chose differently: the served "
          f"rewards follow both users' own choices on {n_follow} of them")
    (user_a, user_b), (prompt, response_a, response_b), ra, rb, _ = next((s for s in scored if s[-1]), scored[0])
    print(f"[demo] prompt: {prompt[:200]!r}")
    print(f"[demo] response A: {response_a[:160]!r}\n[demo] response B: {response_b[:160]!r}")
    for user, r, chose in ((user_a, ra, "A"), (user_b, rb, "B")):
        print(f"[demo] user {user['user_id']} (group {user['group']}, chose {chose}): reward(A) = {r[0]:+.3f}, "
              f"reward(B) = {r[1]:+.3f} -> prefers {'A' if r[0] > r[1] else 'B'}")
    body = json.dumps({"user_id": user_a["user_id"], "prompt": prompt[:80], "responses": [response_a[:80]]})
    print(f"[demo] try it (while the app is up): curl -s {base}/v1/score -H 'Content-Type: application/json' "
          f"-d '{body}'")
    serve.shutdown()
    print("[demo] Serve stopped. To keep the app up:\n"
          f"  serve run serve.app:build_app gnn_dir={args.gnn_dir} reward_dir={args.reward_dir} "
          f"adapt_dir={args.adapt_dir} store_path={args.store_path}")


if __name__ == "__main__":
    main()
