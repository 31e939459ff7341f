"""Synthetic datasets: sampling laws, group sizes, labels = true preferences, kinds, splits, texts."""

from __future__ import annotations

import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from copl_ray.config import ConfigError, load_config
from copl_ray.data import synthetic_text as text
from copl_ray.data.dataset import ANNOTATION_SPLITS, read_annotations, read_table, validate_dataset
from copl_ray.data.synthetic import ASPECTS, PRESETS, SyntheticSpec, generate_dataset, group_counts
from copl_ray.data.synthetic_sampling import annotation_counts, sample_distinct

SMALL = dict(survey_size=500, test_pool_size=120, n_unseen_users=20)


def _make(tmp_path_factory, name, **kw) -> tuple:
    root = tmp_path_factory.mktemp(name)
    spec = SyntheticSpec(**{**SMALL, **kw})
    return root, spec, generate_dataset(spec, root)


def _load(root) -> dict:
    users = read_table(root, "users").to_pandas().set_index("user_id")
    responses = read_table(root, "responses").to_pandas().set_index("response_id")
    prompts = read_table(root, "prompts").to_pandas().set_index("prompt_id")
    ann = {s: read_annotations(root, s).to_pandas() for s in ANNOTATION_SPLITS}
    pairs = pq.read_table(root / "pairs.parquet").to_pandas()
    return dict(users=users, responses=responses, prompts=prompts, ann=ann, pairs=pairs)


def _margins(d: dict, split: str, preset: str) -> np.ndarray:
    """w_user . (s_chosen - s_rejected) for every row of ``split``. [rows]"""
    ann, dims = d["ann"][split], PRESETS[preset]["dims"]
    cols = [f"score_{x}" for x in dims]
    diff = d["responses"].loc[ann.chosen_id, cols].to_numpy(float) - d["responses"].loc[ann.rejected_id, cols].to_numpy(float)
    w = np.stack(d["users"].loc[ann.user_id, "weights"].to_numpy()).astype(float)
    return (w * diff).sum(1)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    out = {}
    for preset, kw in {
        "tldr": dict(annotations="all"),
        "ufp2": dict(annotations="avg"),
        "ufp4": dict(annotations="all", group_ratios=[1, 2, 3, 4], test_common_fraction=0.3),
        "personalllm": dict(annotations="avg"),
    }.items():
        root, spec, metrics = _make(tmp_path_factory, preset, preset=preset, n_users=1000, seed=3, **kw)
        out[preset] = (root, spec, metrics, _load(root))
    return out


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("pool", [40, 5000])  # key path (31^2 > 2*40) and rejection path
def test_sample_distinct_rows_distinct_and_uniform(pool):
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 32, size=4000)
    row, item = sample_distinct(rng, counts, pool)
    assert np.array_equal(np.bincount(row, minlength=4000), counts)
    assert (np.diff(row) >= 0).all()
    keys = row * pool + item
    assert np.unique(keys).size == keys.size, "a row repeats an item"
    freq = np.bincount(item, minlength=pool)
    expected = counts.sum() / pool
    chi2 = ((freq - expected) ** 2 / expected).sum()
    assert chi2 < pool + 6 * np.sqrt(2 * pool), f"items far from uniform (chi2 {chi2:.0f}, dof {pool - 1})"


def test_sample_distinct_rejects_too_many():
    with pytest.raises(ValueError, match="needs 11 distinct pairs but the pool holds only 10"):
        sample_distinct(np.random.default_rng(0), np.array([3, 11]), 10)


def test_annotation_counts_all_and_avg():
    rng = np.random.default_rng(1)
    assert (annotation_counts(rng, 100, 8, "all") == 8).all()
    avg = annotation_counts(rng, 200_000, 16, "avg")
    assert avg.min() == 1 and avg.max() == 31
    assert abs(avg.mean() - 16) < 0.05


@pytest.mark.parametrize("n,ratios,expected", [
    (10_000, [1, 9], [1000, 9000]), (10_000, [1, 2, 3, 4], [1000, 2000, 3000, 4000]),
    (7, [1, 1], [4, 3]), (100, [1, 1, 1], [34, 33, 33]),
])
def test_group_counts(n, ratios, expected):
    assert group_counts(n, ratios).tolist() == expected


# ----------------------------------------------------------------------------- datasets


@pytest.mark.parametrize("preset", list(PRESETS))
def test_valid_and_splits_disjoint(datasets, preset):
    root, spec, metrics, d = datasets[preset]
    summary = validate_dataset(root)
    assert summary.n_annotations == metrics["annotations"]
    seen = set(d["users"].index[d["users"].split == "seen"])
    unseen = set(d["users"].index[d["users"].split == "unseen"])
    assert len(seen) == spec.n_users and len(unseen) == spec.n_unseen_users
    for split in ("train", "test"):
        assert not unseen & set(d["ann"][split].user_id), f"unseen user in {split}"
    assert set(d["ann"]["fewshot"].user_id) == unseen
    # Test pairs are held out: no test pair (nor prompt) is in the survey set.
    survey = d["pairs"][d["pairs"].pool == "survey"]
    assert len(survey) == spec.survey_size and (d["pairs"].pool == "test").sum() == spec.test_pool_size
    key = lambda t, a, b: set(map(frozenset, zip(t[a], t[b])))  # noqa: E731
    survey_pairs = key(survey, "response_a_id", "response_b_id")
    for split in ("test", "test_unseen"):
        ann = d["ann"][split]
        assert not key(ann, "chosen_id", "rejected_id") & survey_pairs
        assert not set(ann.prompt_id) & set(survey.prompt_id)
    for split in ("train", "fewshot"):
        assert key(d["ann"][split], "chosen_id", "rejected_id") <= survey_pairs
    # Sampling without replacement per user: no user sees a pair twice in a split.
    for split, ann in d["ann"].items():
        pairs = ann.user_id + "|" + ann[["chosen_id", "rejected_id"]].min(1) + "|" + ann[["chosen_id", "rejected_id"]].max(1)
        assert not pairs.duplicated().any(), f"{split}: repeated pair for a user"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_annotation_counts_per_user(datasets, preset):
    _, spec, _, d = datasets[preset]
    n = spec.annotations_per_user
    per_user = d["ann"]["train"].groupby("user_id").size().reindex(
        d["users"].index[d["users"].split == "seen"], fill_value=0)
    assert (per_user.to_numpy() == d["users"].loc[per_user.index, "n_train"].to_numpy()).all()
    if spec.annotations == "all":
        assert (per_user == n).all()
    else:
        assert per_user.min() >= 1 and per_user.max() <= 2 * n - 1
        assert abs(per_user.mean() - n) < 4 * np.sqrt((n * n - 1) / 3 / len(per_user))
    assert (d["ann"]["test"].groupby("user_id").size() == spec.test_pairs_per_user).all()
    assert (d["ann"]["fewshot"].groupby("user_id").size() == spec.fewshot_per_user).all()
    assert (d["ann"]["test_unseen"].groupby("user_id").size() == spec.test_pairs_per_unseen_user).all()


def test_group_sizes_follow_ratios(datasets):
    _, _, metrics, d = datasets["ufp4"]
    users = d["users"]
    seen = users[users.split == "seen"].group.value_counts()
    assert seen.to_dict() == {"helpfulness": 100, "honesty": 200, "instruction_following": 300, "truthfulness": 400}
    assert metrics["group_sizes"] == seen.to_dict()
    unseen = users[users.split == "unseen"].group.value_counts()
    assert set(unseen) == {5}
    for preset in ("tldr", "ufp2"):
        counts = datasets[preset][3]["users"].query("split == 'seen'").group.value_counts()
        assert set(counts) == {500} and len(counts) == 2


@pytest.mark.parametrize("preset", list(PRESETS))
def test_labels_follow_true_preference(datasets, preset):
    d = datasets[preset][3]
    for split in ANNOTATION_SPLITS:
        m = _margins(d, split, preset)
        assert (m > 0).all(), f"{split}: {(m <= 0).sum()} labels disagree with the user's weights"


def test_tldr_groups_prefer_visible_length(datasets):
    d = datasets["tldr"][3]
    r = d["responses"]
    assert (r.text.str.split().str.len() == r.score_length).all()
    ann = d["ann"]["train"]
    longer = r.loc[ann.chosen_id, "score_length"].to_numpy() > r.loc[ann.rejected_id, "score_length"].to_numpy()
    group = d["users"].loc[ann.user_id, "group"].to_numpy()
    assert (longer == (group == "long")).all()
    assert set(ann.kind) == {"controversial"}


def test_label_noise_flips_the_given_share(tmp_path_factory):
    root = _make(tmp_path_factory, "noisy", preset="ufp2", n_users=3000, label_noise=0.2, seed=5)[0]
    d = _load(root)
    wrong = (_margins(d, "train", "ufp2") < 0).mean()
    n = len(d["ann"]["train"])
    assert abs(wrong - 0.2) < 4 * np.sqrt(0.2 * 0.8 / n)


def _kinds(d: dict, split: str, preset: str) -> np.ndarray:
    """Recomputed kind: do all groups (PersonalLLM: all dimensions) agree on the pair?"""
    ann, dims = d["ann"][split], PRESETS[preset]["dims"]
    cols = [f"score_{x}" for x in dims]
    diff = d["responses"].loc[ann.chosen_id, cols].to_numpy(float) - d["responses"].loc[ann.rejected_id, cols].to_numpy(float)
    groups = PRESETS[preset]["groups"]
    margin = diff if groups is None else diff @ np.array(list(groups.values())).T
    agree = (margin >= 0).all(1) | (margin <= 0).all(1)
    return np.where(agree, "common", "controversial")


@pytest.mark.parametrize("preset", list(PRESETS))
def test_kind_is_right(datasets, preset):
    _, spec, metrics, d = datasets[preset]
    for split in ANNOTATION_SPLITS:
        assert (d["ann"][split].kind.to_numpy() == _kinds(d, split, preset)).all(), split
    # Survey pairs are all controversial (paper: pairs every group agrees on are removed).
    assert set(d["ann"]["train"].kind) == {"controversial"}
    assert metrics["test_pool_common_share"] == pytest.approx(spec.test_common_fraction, abs=1 / spec.test_pool_size)
    if spec.test_common_fraction > 0:
        assert set(d["ann"]["test"].kind) == {"common", "controversial"}


def test_ufp2_groups_disagree_on_every_survey_pair(datasets):
    d = datasets["ufp2"][3]
    survey = d["pairs"][d["pairs"].pool == "survey"]
    r = d["responses"]
    dh = r.loc[survey.response_a_id, "score_helpfulness"].to_numpy() - r.loc[survey.response_b_id, "score_helpfulness"].to_numpy()
    do = r.loc[survey.response_a_id, "score_honesty"].to_numpy() - r.loc[survey.response_b_id, "score_honesty"].to_numpy()
    assert (dh * do < 0).all()


def test_personalllm_weights(datasets, tmp_path_factory):
    d = datasets["personalllm"][3]
    w = np.stack(d["users"].weights.to_numpy())
    assert w.shape[1] == 4 and np.allclose(w.sum(1), 1, atol=1e-5) and (w >= 0).all()
    assert (d["users"].dominant_dimension.to_numpy() == np.array(ASPECTS)[w.argmax(1)]).all()
    assert d["users"].group.isna().all()
    root = _make(tmp_path_factory, "alpha", preset="personalllm", n_users=1000, dirichlet_alpha=10.0)[0]
    w10 = np.stack(read_table(root, "users").column("weights").to_pylist())
    assert w.max(1).mean() > 0.75 > 0.45 > w10.max(1).mean()  # alpha 0.1: nearly one dimension each


def _visible_levels(prompt: str, response: str, topic: int) -> tuple[int, int, int, int]:
    """Read (helpfulness, honesty, instruction following, truthfulness) back from the texts."""
    tips = text.TOPICS[topic][2]
    h = 1 + sum(tip in response for tip in tips)
    o = next((lvl for lvl, pool in text.HEDGES.items() if any(p and p in response for p in pool)), 3)
    t = 5 - response.count("Fact check:")
    style = "numbered" if "numbered list" in prompt else "bulleted"
    tag = re.search(r"start with '([^']+)'", prompt).group(1)
    numbered, bulleted = bool(re.search(r"^1\. ", response, re.M)), bool(re.search(r"^- ", response, re.M))
    list_pts = 0 if not (numbered or bulleted) else 2 if (numbered if style == "numbered" else bulleted) else 1
    tag_pts = 2 if response.startswith(tag) else 1 if any(response.startswith(x) for x in text.TAGS) else 0
    return h, o, 1 + list_pts + tag_pts, t


@pytest.mark.parametrize("preset", ["ufp4", "personalllm"])
def test_attributes_are_visible_in_text(datasets, preset):
    d = datasets[preset][3]
    r, p = d["responses"], d["prompts"]
    topics = {task: i for i, (task, _, _) in enumerate(text.TOPICS)}
    for rid, row in r.iterrows():
        prompt = p.loc[row.prompt_id]
        seen = _visible_levels(prompt.text, row.text, topics[prompt.topic])
        truth = tuple(int(row[f"score_{a}"]) for a in ASPECTS)
        assert seen == truth, f"{rid}: text shows {seen}, scores are {truth}: {row.text!r}"
    words = r.text.str.split().str.len()
    assert words.max() <= 90 and words.mean() <= 60 and p.text.str.split().str.len().max() <= 25


def test_same_seed_same_data_and_sharding_does_not_matter(tmp_path_factory):
    kw = dict(preset="ufp4", n_users=300, annotations="avg", seed=11)
    a = _make(tmp_path_factory, "a", **kw)[0]
    b = _make(tmp_path_factory, "b", rows_per_shard=1000, **kw)[0]
    c = _make(tmp_path_factory, "c", **{**kw, "seed": 12})[0]
    for split in ANNOTATION_SPLITS:
        assert read_annotations(a, split).equals(read_annotations(b, split))
    assert len(list((b / "annotations" / "train").glob("*.parquet"))) > 1
    for name in ("users", "responses", "prompts"):
        assert read_table(a, name).equals(read_table(b, name))
    assert not read_annotations(a, "train").equals(read_annotations(c, "train"))


@pytest.mark.parametrize("overrides,field", [
    (["preset=ufp4", "group_ratios=[1, 2]"], "group_ratios"),
    (["preset=personalllm", "group_ratios=[1, 1, 1, 1]"], "group_ratios"),
    (["preset=tldr", "test_common_fraction=0.2"], "test_common_fraction"),
    (["preset=ufp2", "annotations=avg", "survey_size=10"], "annotations_per_user"),
    (["preset=ufp2", "test_pool_size=20"], "test_pairs_per_unseen_user"),
    (["preset=ufp4", "presett=ufp2"], "presett"),
    (["preset=ufp4", "test_pool=survey", "survey_size=30"], r"fewshot_per_user \+ test_pairs_per_unseen_user"),
])
def test_bad_spec_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_config(SyntheticSpec, None, overrides)


def test_preset_defaults_follow_the_paper():
    for preset, (survey, n, fewshot) in {
        "tldr": (19_824, 8, 8), "ufp2": (25_993, 8, 8), "ufp4": (25_993, 16, 16), "personalllm": (14_435, 16, 16),
    }.items():
        spec = SyntheticSpec(preset=preset)
        assert (spec.survey_size, spec.annotations_per_user, spec.fewshot_per_user) == (survey, n, fewshot)
        assert (spec.n_users, spec.n_unseen_users, spec.test_pairs_per_user, spec.test_pairs_per_unseen_user) == (
            10_000, 100, 10, 50)


def test_text_models_can_learn_each_group(datasets):
    from copl_ray.data.synthetic_probe import bow_group_accuracy

    acc = bow_group_accuracy(datasets["tldr"][0])
    assert min(acc.values()) > 0.95, acc
    acc = bow_group_accuracy(datasets["ufp4"][0])
    # Response-only words see these attributes; instruction following also needs the prompt.
    assert min(acc["helpfulness"], acc["honesty"], acc["truthfulness"]) > 0.95, acc
    assert acc["instruction_following"] > 0.7, acc


def test_ufp2_dimensions_rule_keeps_pairs_the_groups_agree_on(tmp_path_factory):
    root = _make(tmp_path_factory, "ufp2dims", preset="ufp2", n_users=500, survey_rule="dimensions_disagree")[0]
    d = _load(root)
    survey = d["pairs"][d["pairs"].pool == "survey"]
    cols = [f"score_{a}" for a in ASPECTS]
    diff = d["responses"].loc[survey.response_a_id, cols].to_numpy() - d["responses"].loc[survey.response_b_id, cols].to_numpy()
    assert not ((diff > 0).all(1) | (diff < 0).all(1)).any(), "a survey pair on which all four scores agree"
    assert set(survey.kind) == {"common", "controversial"}
    for split in ANNOTATION_SPLITS:
        assert (_margins(d, split, "ufp2") > 0).all()
        assert (d["ann"][split].kind.to_numpy() == _kinds(d, split, "ufp2")).all()


def test_survey_test_pool_keeps_test_pairs_in_the_graph_and_apart_from_train(tmp_path_factory):
    """``test_pool=survey``: each user's test pairs are survey pairs they did not annotate, labelled
    by their own weights; the dataset validates and its test responses are graph responses."""
    root, spec, metrics = _make(tmp_path_factory, "survey_pool", preset="ufp4", n_users=200, annotations="avg",
                                test_pool="survey")
    validate_dataset(root)
    d = _load(root)
    survey = d["pairs"].query("pool == 'survey'")
    survey_pairs = set(zip(survey.response_a_id, survey.response_b_id)) | set(zip(survey.response_b_id, survey.response_a_id))
    for own, test in (("train", "test"), ("fewshot", "test_unseen")):
        a, t = d["ann"][own], d["ann"][test]
        assert set(zip(t.chosen_id, t.rejected_id)) <= survey_pairs
        keys = lambda df: set(zip(df.user_id, np.minimum(df.chosen_id, df.rejected_id),  # noqa: E731
                                  np.maximum(df.chosen_id, df.rejected_id)))
        assert not keys(a) & keys(t), f"{own} and {test} share a user's pair"
        assert (t.groupby("user_id").size() == (spec.test_pairs_per_user if test == "test"
                                                else spec.test_pairs_per_unseen_user)).all()
        assert (_margins(d, test, "ufp4") > 0).all()
    assert metrics["annotations"]["train"] == int(d["users"].n_train.sum())
