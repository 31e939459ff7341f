"""Benchmark active survey selection against random survey pairs; prints figures, never asserts.

    nice python jobs/bench_survey.py dataset=D gnn_dir=G        # D: make_synthetic ufp4 annotations=avg

Every unseen user of the synthetic dataset, ``repeat`` times, is answered by the generator's true
weights (`copl_ray.adapt.oracle`) and scored on ``eval_pairs`` survey pairs set aside first.
*Random*: the user answers ``max_answers`` random survey pairs; CoPL adaptation (Eq. 11) with the
first n of them. *Active*: starting from no answer, `select_next_pairs` picks the next pair among
``candidates_per_step`` random survey pairs (the eval pairs excluded) given the answers so far, the
user answers, and so on; CoPL adaptation with the first n answers. Reported per n: accuracy of
both, the share of common pairs asked, and the fewest active answers whose accuracy reaches random
at ``max_answers``.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import torch  # noqa: E402
from pydantic import Field  # noqa: E402

from copl_ray.adapt import AdaptParams, adapt_batch, load_gnn_artifacts  # noqa: E402
from copl_ray.adapt.evaluation import pair_correct, plot_curves  # noqa: E402
from copl_ray.adapt.oracle import SyntheticOracle  # noqa: E402
from copl_ray.adapt.survey import select_next_pairs  # noqa: E402
from copl_ray.config import JobConfig, parse_job_args, write_metrics, write_resolved_config  # noqa: E402
from copl_ray.data.dataset import read_table  # noqa: E402


class BenchSurveyConfig(JobConfig):
    """jobs/bench_survey.py: active survey selection vs random pairs on a synthetic dataset."""

    dataset: str
    gnn_dir: str
    output_dir: str = "runs/bench_survey"
    adapt: AdaptParams = Field(default_factory=AdaptParams)
    max_answers: int = Field(16, ge=1)
    eval_pairs: int = Field(50, ge=1)
    repeat: int = Field(4, ge=1)
    candidates_per_step: int = Field(2000, ge=1)
    selection_kappa: float = Field(1.0, gt=0)
    top_neighbors: int = Field(512, ge=1)
    seed: int = 0
    threads: int = Field(1, ge=1, description=(
        "torch intra-op threads; 1 because on a loaded 2-core machine more threads than free cores "
        "made the batch paths 4-40x slower (measured; OpenMP workers wait on each other)"))


def _accuracy(art, vid, chosen, rejected, n, ec, er, params):
    V = len(vid)
    t = pa.table({"user_id": pa.array(np.repeat(np.array(vid, dtype=object), n), pa.string()),
                  "chosen_id": art.response_ids.take(pa.array(chosen[:, :n].ravel())),
                  "rejected_id": art.response_ids.take(pa.array(rejected[:, :n].ravel()))})
    res = adapt_batch(art, t, params, user_ids=vid)
    pu = np.repeat(np.arange(V), ec.shape[1])
    return float(pair_correct(res.embeddings, art.e_resp, pu, ec.ravel(), er.ravel()).mean())


def main(argv=None) -> dict:
    cfg = parse_job_args(BenchSurveyConfig, argv)
    write_resolved_config(cfg, cfg.output_dir)
    torch.set_num_threads(cfg.threads)
    art = load_gnn_artifacts(cfg.gnn_dir, seed=cfg.seed)
    oracle = SyntheticOracle.load(cfg.dataset, art)
    users = read_table(cfg.dataset, "users")
    unseen = pc.filter(users.column("user_id"), pc.equal(users.column("split"), "unseen")).to_pylist()
    rng = np.random.default_rng(cfg.seed)
    S, K = len(oracle.survey_a), cfg.max_answers
    vid, rc, rr, rk, ac, ar, ak, ec, er = [], [], [], [], [], [], [], [], []
    t0 = time.perf_counter()
    select_ms = []
    for rep in range(cfg.repeat):
        for u in unseen:
            w = oracle.weights[u]
            pick = rng.choice(S, cfg.eval_pairs + K, replace=False)
            held = pick[:cfg.eval_pairs]
            c, r = oracle.answer(w, oracle.survey_a[held], oracle.survey_b[held])
            ec.append(c), er.append(r)
            rand = pick[cfg.eval_pairs:]
            c, r = oracle.answer(w, oracle.survey_a[rand], oracle.survey_b[rand])
            rc.append(c), rr.append(r), rk.append(oracle.survey_common[rand])
            # Active: the eval pairs are never candidates; answers accumulate one at a time.
            blocked = np.zeros(S, dtype=bool)
            blocked[held] = True
            chosen, rejected, picked = [], [], []
            for _ in range(K):
                cand = rng.choice(np.flatnonzero(~blocked), min(cfg.candidates_per_step, int((~blocked).sum())),
                                  replace=False)
                answers = {"chosen_id": art.response_ids.take(pa.array(chosen, pa.int64())).to_pylist(),
                           "rejected_id": art.response_ids.take(pa.array(rejected, pa.int64())).to_pylist()}
                ts = time.perf_counter()
                nxt = select_next_pairs(art, answers, oracle.survey_a[cand], oracle.survey_b[cand], n=1,
                                        params=cfg.adapt, selection_kappa=cfg.selection_kappa,
                                        top_neighbors=cfg.top_neighbors)
                select_ms.append(1e3 * (time.perf_counter() - ts))
                q = cand[int(nxt[0])] if nxt.size else cand[0]
                blocked[q] = True
                c, r = oracle.answer(w, oracle.survey_a[[q]], oracle.survey_b[[q]])
                chosen.append(int(c[0])), rejected.append(int(r[0])), picked.append(q)
            ac.append(chosen), ar.append(rejected), ak.append(oracle.survey_common[picked])
            vid.append(f"s{rep}:{u}")
    loop_s = time.perf_counter() - t0
    rc, rr, ac, ar, ec, er = map(np.asarray, (rc, rr, ac, ar, ec, er))
    rk, ak = np.asarray(rk), np.asarray(ak)
    counts = [n for n in (1, 2, 4, 8, 12, 16, 24, 32) if n <= K]
    table = {}
    for n in counts:
        table[str(n)] = {"random": _accuracy(art, vid, rc, rr, n, ec, er, cfg.adapt),
                         "active": _accuracy(art, vid, ac, ar, n, ec, er, cfg.adapt),
                         "common_share_random": float(rk[:, :n].mean()),
                         "common_share_active": float(ak[:, :n].mean())}
        print(f"[survey] n={n:>2}: random {table[str(n)]['random']:.4f}  active {table[str(n)]['active']:.4f}"
              f"  (common share {table[str(n)]['common_share_random']:.2f} / {table[str(n)]['common_share_active']:.2f})")
    target = table[str(K)]["random"]
    full = {n: _accuracy(art, vid, ac, ar, n, ec, er, cfg.adapt) for n in range(1, K + 1)}
    reach = next((n for n in range(1, K + 1) if full[n] >= target), None)
    print(f"[survey] random@{K} = {target:.4f}; active reaches it with {reach} answers; "
          f"selection p50 {np.percentile(select_ms, 50):.1f} ms")
    plot_curves({"random pairs": {n: table[str(n)]["random"] for n in counts},
                 "active selection": {n: full[n] for n in range(1, K + 1)}},
                Path(cfg.output_dir) / "survey_curve.png", title="CoPL adaptation: active vs random survey")
    metrics = {"n_virtual_users": len(vid), "eval_pairs_per_user": cfg.eval_pairs, "by_n": table,
               "active_by_n": {str(n): a for n, a in full.items()}, "random_at_max": target,
               "active_answers_to_reach_random_at_max": reach,
               "selection_ms": {"p50": float(np.percentile(select_ms, 50)),
                                "p99": float(np.percentile(select_ms, 99))},
               "loop_seconds": loop_s}
    write_metrics(metrics, cfg.output_dir)
    return metrics


if __name__ == "__main__":
    main()
