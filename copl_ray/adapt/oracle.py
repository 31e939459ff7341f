"""Benchmark support on synthetic datasets (`jobs/make_synthetic.py`): answer any survey pair as a
given user would, from the generator's true user ``weights`` and response ``score_<dim>`` columns
(the generator's own rule: a wins when w . (s_a - s_b) > 0, an exact tie goes to b).

This lets a benchmark score adaptation on pairs that are *in the graph* (survey pairs not given
at adaptation), give users any number of annotations (the curve up to 32 while the dataset's
fewshot split holds 16), and let an active selector ask pairs of its choosing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from copl_ray.adapt.artifacts import GNNArtifacts

__all__ = ["SyntheticOracle"]


@dataclass
class SyntheticOracle:
    """True preferences of a synthetic dataset, indexed like a `GNNArtifacts`.

    Attributes:
        scores: [R, D] true attribute scores, rows in the artifacts' response order.
        survey_a, survey_b: [S] response indices of the survey pairs; survey_common: [S] bool,
            the pair is ``kind == "common"`` (every group agrees).
        weights: {user_id: [D]} true weights of every user; groups: {user_id: group}.
    """

    scores: np.ndarray
    survey_a: np.ndarray
    survey_b: np.ndarray
    survey_common: np.ndarray
    weights: dict
    groups: dict

    @classmethod
    def load(cls, dataset: str | os.PathLike, art: GNNArtifacts) -> "SyntheticOracle":
        root = Path(dataset)
        resp = pq.read_table(root / "responses.parquet")
        dims = [c for c in resp.column_names if c.startswith("score_")]
        if not dims:
            raise ValueError(f"{root}/responses.parquet has no score_<dim> columns: not a synthetic dataset")
        order = pc.index_in(art.response_ids, value_set=resp.column("response_id").combine_chunks())
        if order.null_count:
            raise ValueError(f"{root}: the gnn_dir names responses that the dataset lacks")
        order = order.to_numpy(zero_copy_only=False)
        scores = np.stack([resp.column(c).to_numpy().astype(np.float64) for c in dims], 1)[order]
        pairs = pq.read_table(root / "pairs.parquet")
        survey = pairs.filter(pc.equal(pairs.column("pool"), "survey"))
        a = art.response_index(survey.column("response_a_id").to_pylist(), "response_a_id", "pairs.parquet")
        b = art.response_index(survey.column("response_b_id").to_pylist(), "response_b_id", "pairs.parquet")
        users = pq.read_table(root / "users.parquet", columns=["user_id", "group", "weights"])
        ids = users.column("user_id").to_pylist()
        w = np.asarray(users.column("weights").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                       dtype=np.float64).reshape(len(ids), -1)
        common = pc.equal(survey.column("kind"), "common").to_numpy(zero_copy_only=False)
        groups = dict(zip(ids, users.column("group").to_pylist()))
        return cls(scores, a, b, np.asarray(common, dtype=bool), dict(zip(ids, w)), groups)

    def answer(self, weights: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(chosen [n], rejected [n]) for one user's weights [D] on pairs (a, b) [n]."""
        a_wins = (self.scores[a] - self.scores[b]) @ weights > 0
        return np.where(a_wins, a, b), np.where(a_wins, b, a)
