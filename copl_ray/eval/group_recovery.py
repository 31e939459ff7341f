"""Can a learner that is not told the groups recover them from the annotations? Two measurements.

Issue 14 asks the GNN to beat one shared preference by 5 points on every case of the robustness
suite. A learner told every user's true group (`copl_ray.eval.references.fit_true_groups`) clears
that bar on most cases; on some, the GNN, spectral clustering of the agreement matrix and a
latent-class model all stay at shared. This module separates the two things such a learner must do:

* ``latent_class_em`` (`copl_ray.gnn.latent_classes`, where ``train_gnn``'s warm start uses it):
  the maximum-likelihood way to infer groups from annotations alone, a mixture of K Bradley-Terry
  models fit by EM. From a random start (plain, and with deterministic annealing) it shows whether
  the groups can be found; started at the true groups (``init_groups``) it shows whether they are
  even a stable solution: if EM drifts away from them, the annotations do not pin the groups down
  at this size.
* ``known_preference_ceiling``: the accuracy of the Bayes rule that knows every group's preference
  on every pair exactly (a latent-suite dataset's true attribute scores and user weights, read from
  its files) and infers only the user's group from their train pairs. Far above the learners, it
  says the groups are identifiable in principle; the learners' gap is then learning each pair's
  per-group preference from the few co-annotators each has, not a lack of signal per user.

Both read only train pairs to infer anything; test pairs are scored, never fitted.
`jobs/bench_group_recovery.py` prints them beside the references for the suite's datasets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["known_preference_ceiling"]


def known_preference_ceiling(dataset: str | Path) -> dict:
    """Accuracy on seen users' test pairs of the Bayes rule that knows each group's preferences.

    Needs a latent-suite dataset (`copl_ray.data.latent_suite`): ``responses.score_*`` (true
    attribute scores s_r) and ``users.weights`` / ``users.group``. Group g's direction w_g is the
    normalised mean weight vector of its users, the within-group spread sigma and the label noise nu
    are estimated from the weights and train labels; a user of group g prefers a over b with
    p_g = (1 - nu) Phi(w_g . d / (sigma |d| / sqrt(k))) + nu (1 - Phi(.)), d = s_a - s_b.
    The user's posterior over groups comes from their train pairs (group prior: seen users' shares),
    and the rule predicts a when sum_g post_g p_g > 1/2.

    Returns:
        {"ceiling": that accuracy, "group_known": the same rule told the user's group,
         "shared_rule": the prior-mixed rule (no user information), "label_noise", "spread"}.
    """
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq
    from scipy.stats import norm

    root = Path(dataset)
    users = pq.read_table(root / "users.parquet").to_pandas()
    responses = pq.read_table(root / "responses.parquet").to_pandas()
    score_cols = sorted(c for c in responses.columns if c.startswith("score_"))
    if not score_cols or "weights" not in users.columns:
        raise ValueError(f"{root}: known_preference_ceiling needs a latent-suite dataset "
                         "(responses.score_* and users.weights columns)")
    k = len(score_cols)
    row_of_response = {r: i for i, r in enumerate(responses.response_id)}
    attr = responses[score_cols].to_numpy(np.float64)
    weights = np.stack(users.weights.to_numpy()).astype(np.float64)
    names, group = np.unique(users.group.astype(str).to_numpy(), return_inverse=True)
    row_of_user = {u: i for i, u in enumerate(users.user_id)}
    directions = np.stack([weights[group == g].mean(0) for g in range(len(names))])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    spread = float(np.sqrt(k) * np.std(weights - directions[group]))
    seen = (users.split == "seen").to_numpy()
    prior = np.bincount(group[seen], minlength=len(names)) / seen.sum()

    def read(split):
        t = pads.dataset(str(root / "annotations" / split), format="parquet").to_table().to_pandas()
        u = np.array([row_of_user[x] for x in t.user_id])
        d = attr[[row_of_response[x] for x in t.chosen_id]] - attr[[row_of_response[x] for x in t.rejected_id]]
        return u, d  # d: [n, k], chosen minus rejected

    tu, td = read("train")
    noise = float(np.mean((weights[tu] * td).sum(1) < 0))  # labels against the user's own weights

    def p_chosen(d):  # [n, G]: P(a user of group g prefers the chosen response)
        z = d @ directions.T / (spread * np.linalg.norm(d, axis=1, keepdims=True) / np.sqrt(k) + 1e-12)
        p = norm.cdf(z)
        return (1 - noise) * p + noise * (1 - p)

    log_post = np.zeros((len(users), len(names)))
    np.add.at(log_post, tu, np.log(np.clip(p_chosen(td), 1e-9, 1.0)))
    log_post += np.log(np.clip(prior, 1e-12, 1.0))
    post = np.exp(log_post - log_post.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)

    eu, ed = read("test")
    pc = p_chosen(ed)

    def accuracy(p):  # p: P(chosen preferred), ties half
        return float(np.mean((p > 0.5) + 0.5 * (p == 0.5)))

    return {"ceiling": accuracy((post[eu] * pc).sum(1)),
            "group_known": accuracy(pc[np.arange(len(eu)), group[eu]]),
            "shared_rule": accuracy(pc @ prior), "label_noise": noise, "spread": spread}
