"""A learnability probe for synthetic datasets: can a text model see what each group prefers?

For each group (PersonalLLM: users grouped by their dominant dimension) a linear Bradley-Terry
reward on bag-of-words counts of the *response text alone* is fit on that group's train
annotations and scored on its seen-user test pairs. High accuracy says the attribute is visible
in the text. It is a lower bound for a model that also reads the prompt: instruction following
is judged against the format the prompt asks for, which a response-only model cannot see.
"""

from __future__ import annotations

import os

import numpy as np
from scipy.sparse import vstack
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from copl_ray.data.dataset import read_annotations, read_table


def bow_group_accuracy(root: str | os.PathLike, max_train_rows: int = 20_000, seed: int = 0) -> dict[str, float]:
    """Test accuracy of a per-group bag-of-words linear reward; ``{group: accuracy}``.

    Features of a pair are ``counts(chosen) - counts(rejected)`` ([rows, vocab], whitespace
    tokens so list markers and punctuation count); the model is logistic regression without an
    intercept on both orientations, i.e. a BTL reward ``r(x) = w . counts(x)``.
    """
    responses = read_table(root, "responses")
    users = read_table(root, "users").to_pandas().set_index("user_id")
    key = users["group"] if users["group"].notna().any() else users.get("dominant_dimension")
    if key is None:
        raise ValueError(f"{root}: users.parquet has neither 'group' nor 'dominant_dimension' values")
    texts = responses.column("text").to_pylist()
    index = {rid: i for i, rid in enumerate(responses.column("response_id").to_pylist())}
    counts = CountVectorizer(token_pattern=r"\S+").fit_transform(texts)
    train = read_annotations(root, "train").to_pandas()
    test = read_annotations(root, "test").to_pandas()
    rng = np.random.default_rng(seed)

    def diff(rows):
        return counts[rows.chosen_id.map(index).to_numpy()] - counts[rows.rejected_id.map(index).to_numpy()]

    out = {}
    for group in sorted(key.dropna().unique()):
        tr = train[key.loc[train.user_id].to_numpy() == group]
        te = test[key.loc[test.user_id].to_numpy() == group]
        if len(tr) == 0 or len(te) == 0:
            continue
        if len(tr) > max_train_rows:
            tr = tr.iloc[np.sort(rng.choice(len(tr), max_train_rows, replace=False))]
        d = diff(tr)
        y = np.r_[np.ones(d.shape[0]), np.zeros(d.shape[0])]
        model = LogisticRegression(fit_intercept=False, max_iter=2000).fit(vstack([d, -d]), y)
        out[str(group)] = float(((diff(te) @ model.coef_.ravel()) > 0).mean())
    return out
