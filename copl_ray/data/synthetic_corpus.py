"""Prompts, responses and the two pair pools (survey set, held-out test pool) of a synthetic dataset.

Each prompt gets ``K`` responses with latent integer attribute scores; candidate pairs are the
``K(K-1)/2`` response pairs of a prompt, visited in a random order. A pair's *group margins* are
``W @ (s_a - s_b)`` for the preset's group weight rows ``W [G, D]``:

* grouped presets: a pair is usable when every group has a margin of at least ``min_margin`` (no
  group is indifferent); it is ``common`` when all groups prefer the same response, else
  ``controversial``;
* PersonalLLM (no groups): a pair is usable when the scores differ; it is ``common`` when one
  response is at least as good on every dimension (every non-negative user weight then agrees),
  else ``controversial``.

The survey set keeps only controversial pairs (paper App. D.1: UF-P-2/UF-P-4/PersonalLLM drop
pairs every group agrees on; TL;DR pairs are always controversial), or, with
``survey_rule=dimensions_disagree``, pairs on which not all score dimensions agree. The test pool is drawn from
separate prompts, with a chosen share of common pairs so accuracy can be split by ``kind``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from copl_ray.data import synthetic_text as text

KIND_NAMES = ("common", "controversial")
_MAX_ROUNDS = 200


@dataclass
class PairSet:
    """Pairs of response indices. All arrays [P]: prompt, a, b (int64), kind (int8 into KIND_NAMES)."""

    prompt: np.ndarray
    a: np.ndarray
    b: np.ndarray
    kind: np.ndarray

    def __len__(self) -> int:
        return int(self.a.shape[0])


@dataclass
class Corpus:
    """Prompts, responses and pair pools with dense indices.

    Attributes:
        prompt_text: [P] str; prompt_extra: extra prompt columns, each [P].
        response_prompt: [R] int64 prompt index; response_text: [R] str.
        scores: [R, D] int64 latent attribute scores (names in ``dims``).
        response_extra: extra response columns, each [R].
        survey, test: the survey set and the held-out test pool.
    """

    dims: tuple[str, ...]
    prompt_text: np.ndarray
    prompt_extra: dict
    response_prompt: np.ndarray
    response_text: np.ndarray
    scores: np.ndarray
    response_extra: dict
    survey: PairSet
    test: PairSet


def classify(diff: np.ndarray, group_weights: np.ndarray | None, min_margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Usable mask and kind of pairs with score differences ``diff [C, D]``.

    Args:
        group_weights: [G, D] per-group weights, or None for PersonalLLM-style free mixtures.
    Returns:
        usable [C] bool and kind [C] int8 (0 common, 1 controversial; meaningless where unusable).
    """
    if group_weights is None:
        usable = (diff != 0).any(axis=1)
        common = (diff >= 0).all(axis=1) | (diff <= 0).all(axis=1)
    else:
        margin = diff @ group_weights.T  # [C, G]
        usable = (np.abs(margin) >= min_margin).all(axis=1)
        common = (margin > 0).all(axis=1) | (margin < 0).all(axis=1)
    return usable, np.where(common, 0, 1).astype(np.int8)


class _Candidates:
    """Rounds of freshly drawn prompts with K responses each; all drawn state kept for rendering."""

    def __init__(self, rng: np.random.Generator, style: str, k: int, n_dims: int):
        self.rng, self.style, self.k, self.n_dims = rng, style, k, n_dims
        self.prompt_spec, self.resp_u, self.levels, self.scores = [], [], [], []
        self.summaries: list[np.ndarray] = []
        self.n_prompts = 0
        self.slots = np.stack(np.triu_indices(k, 1), axis=1)  # [C, 2] response slots per pair

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw ``n`` prompts; return their candidate pairs (prompt, a, b) as global indices,
        each prompt's pairs in a random order."""
        rng, k = self.rng, self.k
        pu = rng.random((n, 4))
        ru = rng.random((n * k, text.N_RANDOM))
        if self.style == "tldr":
            spec = text.draw_post_spec(pu)
            levels = rng.integers(1, text.MAX_SUMMARY_SENTENCES + 1, size=(n * k, 1))
            summ = np.array([text.render_summary(spec[i // k], int(levels[i, 0]), ru[i])
                             for i in range(n * k)], dtype=object)
            scores = np.array([[text.word_count(s)] for s in summ], dtype=np.int64)
            self.summaries.append(summ)
        else:
            spec = text.draw_prompt_spec(pu)
            levels = rng.integers(1, 6, size=(n * k, self.n_dims))
            scores = levels.astype(np.int64)
        self.prompt_spec.append(spec)
        self.resp_u.append(ru)
        self.levels.append(levels)
        self.scores.append(scores)
        order = np.argsort(rng.random((n, len(self.slots))), axis=1)  # random pair order per prompt
        slots = self.slots[order]  # [n, C, 2]
        prompt = np.repeat(np.arange(self.n_prompts, self.n_prompts + n), len(self.slots))
        base = prompt * k
        a, b = base + slots[..., 0].ravel(), base + slots[..., 1].ravel()
        self.n_prompts += n
        return prompt, a, b


def _capped(prompt: np.ndarray, cap: int) -> np.ndarray:
    """Mask keeping the first ``cap`` entries of each run of equal (sorted) prompt indices."""
    if prompt.size == 0:
        return np.zeros(0, bool)
    start = np.r_[0, np.flatnonzero(prompt[1:] != prompt[:-1]) + 1]
    run_start = np.repeat(start, np.diff(np.r_[start, prompt.size]))
    return (np.arange(prompt.size) - run_start) < cap


ANY_NOT_UNANIMOUS = -1  # quota key: usable pairs of either kind whose score dimensions disagree


def _select(cand: _Candidates, quotas: dict[int, int], cap: int, group_weights, min_margin) -> PairSet:
    """Draw prompts until each quota of usable pairs is met (at most ``cap`` pairs per quota key
    per prompt); the first pairs in draw order are kept. Keys: a kind (0 common, 1
    controversial) or ``ANY_NOT_UNANIMOUS``."""
    got = {kind: [] for kind in quotas}
    have = dict.fromkeys(quotas, 0)
    n = max(64, int(1.2 * sum(quotas.values()) / max(cap, 1)))
    for _ in range(_MAX_ROUNDS):
        if all(have[k] >= q for k, q in quotas.items()):
            break
        prompt, a, b = cand.draw(n)
        scores = np.concatenate(cand.scores)
        diff = scores[a] - scores[b]
        usable, kind = classify(diff, group_weights, min_margin)
        unanimous = (diff > 0).all(axis=1) | (diff < 0).all(axis=1)
        rounds_need = 0.0
        for k_, quota in quotas.items():
            m = np.flatnonzero(usable & (~unanimous if k_ == ANY_NOT_UNANIMOUS else kind == k_))
            m = m[_capped(prompt[m], cap)]
            # Prompts this kind still needs, at the yield this round showed.
            rate = max(m.size / n, 1.0 / n)
            m = m[: max(0, quota - have[k_])]
            got[k_].append((prompt[m], a[m], b[m]))
            have[k_] += m.size
            rounds_need = max(rounds_need, (quota - have[k_]) / rate)
        n = int(min(10 * n, 1.1 * rounds_need + 16))
    missing = {KIND_NAMES[k]: q - have[k] for k, q in quotas.items() if have[k] < q}
    if missing:
        raise ValueError(f"could not find enough pairs of kind(s) {missing} after {_MAX_ROUNDS} rounds")
    prompt, a, b = (np.concatenate([x[i] for k_ in quotas for x in got[k_]]) for i in range(3))
    scores = np.concatenate(cand.scores)
    return PairSet(prompt, a, b, classify(scores[a] - scores[b], group_weights, min_margin)[1])


def build_corpus(rng: np.random.Generator, *, style: str, dims: tuple[str, ...], group_weights: np.ndarray | None,
                 min_margin: float, responses_per_prompt: int, pairs_per_prompt: int,
                 survey_size: int, test_pool_size: int, test_common_fraction: float,
                 survey_rule: str = "groups_disagree") -> Corpus:
    """Draw prompts/responses, pick the survey set and the test pool (on separate prompts), and
    render the texts of the prompts and responses that some pair uses.

    ``survey_rule``: ``groups_disagree`` keeps controversial pairs only; ``dimensions_disagree``
    keeps pairs on which not all score dimensions agree (UF-P's construction, which leaves pairs
    that the preset's groups agree on when the groups use fewer dimensions than the scores).
    """
    cand = _Candidates(rng, style, responses_per_prompt, len(dims))
    key = {"groups_disagree": 1, "dimensions_disagree": ANY_NOT_UNANIMOUS}[survey_rule]
    survey = _select(cand, {key: survey_size}, pairs_per_prompt, group_weights, min_margin)
    n_common = int(round(test_common_fraction * test_pool_size))
    quotas = {k: q for k, q in ((0, n_common), (1, test_pool_size - n_common)) if q > 0}
    test = _select(cand, quotas, pairs_per_prompt, group_weights, min_margin)
    spec = np.concatenate(cand.prompt_spec)
    resp_u = np.concatenate(cand.resp_u)
    levels = np.concatenate(cand.levels)
    scores = np.concatenate(cand.scores)

    # Compact to the prompts and responses that pairs use; keep draw order.
    used_r = np.unique(np.concatenate([survey.a, survey.b, test.a, test.b]))
    used_p = np.unique(np.concatenate([survey.prompt, test.prompt]))
    r_new = np.full(scores.shape[0], -1, np.int64)
    r_new[used_r] = np.arange(used_r.size)
    p_new = np.full(spec.shape[0], -1, np.int64)
    p_new[used_p] = np.arange(used_p.size)
    for ps in (survey, test):
        ps.prompt, ps.a, ps.b = p_new[ps.prompt], r_new[ps.a], r_new[ps.b]
    k = responses_per_prompt
    r_prompt_old = used_r // k
    if style == "tldr":
        prompt_text = np.array([text.render_post(spec[p]) for p in used_p], dtype=object)
        response_text = np.concatenate(cand.summaries)[used_r]
        prompt_extra = {"topic": np.array([text.POSTS[int(spec[p, 0])][1] for p in used_p], dtype=object)}
        response_extra = {"n_sentences": levels[used_r, 0].astype(np.int32)}
    else:
        prompt_text = np.array([text.render_prompt(spec[p]) + "." for p in used_p], dtype=object)
        response_text = np.array([text.render_response(spec[r // k], levels[r], resp_u[r]) for r in used_r],
                                 dtype=object)
        prompt_extra = {
            "topic": np.array([text.TOPICS[int(spec[p, 0])][0] for p in used_p], dtype=object),
            "list_style": np.array([text.LIST_STYLES[int(spec[p, 2])] for p in used_p], dtype=object),
            "opening_tag": np.array([text.TAGS[int(spec[p, 3])] for p in used_p], dtype=object),
        }
        response_extra = {}
    return Corpus(
        dims=dims, prompt_text=prompt_text, prompt_extra=prompt_extra,
        response_prompt=p_new[r_prompt_old], response_text=response_text, scores=scores[used_r],
        response_extra=response_extra, survey=survey, test=test,
    )
