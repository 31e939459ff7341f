"""Group recovery diagnostics (copl_ray.eval.group_recovery, jobs/bench_group_recovery.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from copl_ray.data.latent_suite import LatentCase, generate_latent_dataset
from copl_ray.graph.build import Triples
from tests.job_loader import load_job


@pytest.fixture(scope="module")
def opposed_groups(tmp_path_factory):
    """Two equal groups, dense, no label noise: the groups are easy to find."""
    root = tmp_path_factory.mktemp("groups") / "d"
    generate_latent_dataset(LatentCase(n_users=300, n_unseen_users=0, n_groups=2, n_pairs=200,
                                       label_noise=0.0, seed=2), root)
    return root


def _split(root):
    from copl_ray.data.dataset import read_annotations, read_table
    from copl_ray.graph.id_map import IdMap

    users, resp = read_table(root, "users"), read_table(root, "responses")
    um, rm = IdMap(users.column("user_id").combine_chunks()), IdMap(resp.column("response_id").combine_chunks())

    def triples(split):
        t = read_annotations(root, split)
        return Triples(um.lookup(t.column("user_id")), rm.lookup(t.column("chosen_id")),
                       rm.lookup(t.column("rejected_id")))

    train, test = triples("train"), triples("test")
    fit = Triples(train.user[::2], train.chosen[::2], train.rejected[::2])
    val = Triples(train.user[1::2], train.chosen[1::2], train.rejected[1::2])
    _, truth = np.unique(users.column("group").to_numpy(zero_copy_only=False), return_inverse=True)
    return len(um), len(rm), fit, val, test, truth


def test_em_finds_two_opposed_groups_and_keeps_them_when_started_there(opposed_groups, one_torch_thread):
    from copl_ray.gnn.latent_classes import latent_class_em

    n_u, n_r, fit, val, test, truth = _split(opposed_groups)
    one = latent_class_em(n_u, n_r, fit, 1, val=val, test=test, iterations=5)  # one class = one shared preference
    found = latent_class_em(n_u, n_r, fit, 2, val=val, test=test, iterations=10)
    kept = latent_class_em(n_u, n_r, fit, 2, val=val, test=test, init_groups=truth, iterations=5)
    assert found.test_accuracy > one.test_accuracy + 0.1
    assert kept.test_accuracy > 0.85 and kept.last_test_accuracy > 0.85
    assert len(kept.test_by_iteration) == 5
    annealed = latent_class_em(n_u, n_r, fit, 2, val=val, test=test, iterations=10, anneal_from=3.0,
                               anneal_iterations=5)
    assert annealed.test_accuracy > one.test_accuracy + 0.1
    with pytest.raises(ValueError, match="anneal_from"):
        latent_class_em(n_u, n_r, fit, 2, anneal_from=0.5)


def test_em_chooses_its_iteration_without_reading_test_labels(opposed_groups, one_torch_thread):
    from copl_ray.gnn.latent_classes import latent_class_em

    n_u, n_r, fit, val, test, truth = _split(opposed_groups)
    flipped = Triples(test.user, test.rejected, test.chosen)  # every test label reversed
    a = latent_class_em(n_u, n_r, fit, 2, val=val, test=test, iterations=6, seed=3)
    b = latent_class_em(n_u, n_r, fit, 2, val=val, test=flipped, iterations=6, seed=3)
    assert a.best_iteration == b.best_iteration and a.val == b.val
    assert a.val_by_iteration == b.val_by_iteration and len(a.val_by_iteration) == 6
    assert a.val_by_iteration[a.best_iteration] == a.val  # the kept iteration is the one validation scored
    assert latent_class_em(n_u, n_r, fit, 2, iterations=2).val_by_iteration == []  # no validation pairs
    assert a.test_accuracy == pytest.approx(1 - b.test_accuracy)


def test_known_preference_ceiling_is_high_on_noiseless_opposed_groups(opposed_groups):
    from copl_ray.eval.group_recovery import known_preference_ceiling

    out = known_preference_ceiling(opposed_groups)
    assert out["label_noise"] == 0.0
    assert out["ceiling"] > 0.9 and out["group_known"] >= out["ceiling"] - 0.02
    assert out["shared_rule"] < out["ceiling"] - 0.2  # one rule for both groups loses the personal pairs


def test_known_preference_ceiling_names_a_dataset_it_cannot_use(tiny_dataset):
    from copl_ray.eval.group_recovery import known_preference_ceiling

    with pytest.raises(ValueError, match="latent-suite dataset") as err:
        known_preference_ceiling(tiny_dataset)
    assert str(tiny_dataset) in str(err.value)


def test_bench_group_recovery_job_prints_every_figure(ray_session, opposed_groups, tmp_path, capsys):
    out = load_job("bench_group_recovery").main([f"datasets=[{opposed_groups}]", f"output_dir={tmp_path / 'o'}",
                                                 "em_iterations=3", "annealed_iterations=3"])
    row = out["rows"][0]
    for key in ("shared", "true_groups", "em", "em_annealed", "em_loo", "em_from_truth", "em_loo_from_truth",
                "ceiling", "group_known"):
        assert 0.0 <= row[key] <= 1.0, key
    assert row["n_groups"] == 2 and row["gnn"] is None
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["rows"][0]["case"] == "d"
    assert "[group-recovery] d" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a job's config error: the message, exit status 2
        load_job("bench_group_recovery").main([f"output_dir={tmp_path / 'o2'}"])
    assert "robustness_dir" in capsys.readouterr().err
