"""Importers of the public formats: small files written here in the real on-disk shapes
(FORMATS.md) go through jobs/import_dataset.py; the output must validate, labels must follow the
paper's rules, and malformed input must be rejected naming file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from copl_ray.data import read_annotations, read_table, validate_dataset
from copl_ray.data.importers.common import FormatError, sample_without_replacement
from copl_ray.data.importers.personalllm import ALL_REWARD_MODELS, COPL_REWARD_MODELS
from tests.job_loader import load_job

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["n_users=40", "n_unseen_users=4", "n_test=3", "n_unseen_test=3"]


def _job():
    return load_job("import_dataset")


def run(args):
    return _job().main(args)


def _texts(root) -> dict:
    t = read_table(root, "responses")
    return dict(zip(t.column("response_id").to_pylist(), t.column("text").to_pylist()))


# ----------------------------------------------------------------------------- TL;DR

WORKERS = [f"w{i:02d}" + "x" * 27 for i in range(12)]


def tldr_rows(n_posts=40, seed=0):
    """Comparison records as in batch*.json: sup-vs-sup rows from 12 workers, plus a ppo row, a ref
    row and a CNN/DM row (no post) that the CoPL filter drops."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_posts):
        split = "train" if p < n_posts * 3 // 4 else ("valid1" if p % 2 else "valid2")
        for c in range(2):
            a = " " + "short " * int(rng.integers(1, 6)) + f"p{p}c{c}"
            b = " " + "a longer summary " * int(rng.integers(6, 12)) + f"p{p}c{c}"
            worker = WORKERS[int(rng.integers(0, 12)) if p % 3 else c]
            rows.append({"info": {"id": f"t3_{p}", "post": f"post {p} " * 5, "title": "t", "subreddit": "r"},
                         "summaries": [{"text": a, "policy": "sup2", "note": None},
                                       {"text": b, "policy": "sup4_6b", "note": "n"}],
                         "choice": int(rng.integers(0, 2)), "worker": worker, "batch": "batch3",
                         "split": split, "extra": {"confidence": 7} if c else {}})
    rows.append({**rows[0], "summaries": [{"text": " ppo one", "policy": "sup4_ppo_rm3_kl10", "note": None},
                                          {"text": " sup one", "policy": "sup4", "note": None}]})
    rows.append({**rows[0], "summaries": [{"text": " ref one", "policy": "ref", "note": None},
                                          {"text": " sup two", "policy": "sup4", "note": None}]})
    rows.append({"info": {"id": "cnn1", "site": "cnn", "title": "x", "article": "..."},
                 "summaries": rows[0]["summaries"], "choice": 0, "worker": WORKERS[0],
                 "batch": "batch0_cnndm", "split": "train", "extra": {}})
    return rows


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tldr_simulated_users_prefer_their_length(tmp_path):
    src = write_jsonl(tmp_path / "comparisons" / "batch3.json", tldr_rows())
    out = tmp_path / "ds"
    m = run(["source=tldr", f"input={src.parent}", f"output_dir={out}", *SMALL])
    validate_dataset(out)
    assert m["n_seen_users"] == 40 and m["n_unseen_users"] == 4
    texts = _texts(out)
    assert not any("ppo" in t or "ref one" in t for t in texts.values()), "policy filter let a row through"
    users = read_table(out, "users")
    group = dict(zip(users.column("user_id").to_pylist(), users.column("group").to_pylist()))
    assert sorted(set(group.values())) == ["long", "short"]
    for split, n in (("seen", 20), ("unseen", 2)):  # groups split evenly, seen and unseen alike
        g = pc.filter(users.column("group"), pc.equal(users.column("split"), split)).to_pylist()
        assert g.count("short") == g.count("long") == n
    for split in ("train", "test", "fewshot", "test_unseen"):
        ann = read_annotations(out, split).to_pylist()
        assert ann
        for row in ann:
            shorter = len(texts[row["chosen_id"]]) < len(texts[row["rejected_id"]])
            assert shorter == (group[row["user_id"]] == "short"), row
            assert row["kind"] == "controversial"
    train = read_annotations(out, "train")
    per_user = pc.value_counts(train.column("user_id")).field("counts").to_numpy()
    assert (per_user == 8).all()  # ALL mode: n_context = 8 for TL;DR
    n_train = pq.read_table(out / "users.parquet").column("n_train").to_pylist()
    assert n_train == [8] * 40 + [8] * 4  # seen: train annotations; unseen: few-shot annotations


def test_tldr_is_deterministic_per_seed(tmp_path):
    src = write_jsonl(tmp_path / "c" / "batch3.json", tldr_rows())
    tables = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        run(["source=tldr", f"input={src}", f"output_dir={tmp_path / name}", f"seed={seed}",
             "annotations=avg", *SMALL])
        tables.append(read_annotations(tmp_path / name, "train"))
    assert tables[0].equals(tables[1])
    assert not tables[0].equals(tables[2])
    counts = pc.value_counts(tables[0].column("user_id")).field("counts").to_numpy()
    assert counts.min() >= 1 and counts.max() <= 15  # AVG: uniform on 1..15


def test_tldr_real_workers_keep_real_choices(tmp_path):
    rows = tldr_rows()
    src = write_jsonl(tmp_path / "c" / "batch3.json", rows)
    out = tmp_path / "ds"
    run(["source=tldr", f"input={src}", f"output_dir={out}", "tldr.users=real_workers",
         "tldr.top_workers=6", "n_unseen_users=1"])
    validate_dataset(out)
    users = read_table(out, "users")
    assert users.num_rows == 6 and pc.sum(pc.equal(users.column("split"), "unseen")).as_py() == 1
    texts = _texts(out)
    truth = {}
    for r in rows:
        if "post" in r["info"] and "ppo" not in r["summaries"][0]["policy"] + r["summaries"][1]["policy"]:
            s = r["summaries"]
            truth.setdefault((r["worker"], s[r["choice"]]["text"], s[1 - r["choice"]]["text"]), 0)
    n = 0
    for split in ("train", "test", "fewshot", "test_unseen"):
        for row in read_annotations(out, split).to_pylist():
            assert (row["user_id"], texts[row["chosen_id"]], texts[row["rejected_id"]]) in truth
            n += 1
    assert n > 0


def test_tldr_real_workers_rejects_n_users(tmp_path):
    with pytest.raises(SystemExit):
        run(["source=tldr", "input=x", f"output_dir={tmp_path}", "tldr.users=real_workers", "n_users=5"])


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.update(choice=2), "choice"),
    (lambda r: r.update(choice=True), "choice"),
    (lambda r: r.pop("worker"), "worker"),
    (lambda r: r["summaries"].pop(), "summaries"),
    (lambda r: r["summaries"][1].update(text=None), "summaries[1].text"),
    (lambda r: r.update(split="test"), "split"),
    (lambda r: r["info"].update(post=3), "info.post"),
])
def test_tldr_rejects_malformed_rows_naming_file_line_field(tmp_path, mutate, field):
    rows = tldr_rows(n_posts=6)
    mutate(rows[2])
    src = write_jsonl(tmp_path / "batch9.json", rows)
    from copl_ray.data.importers import import_tldr, SimulationPlan, TldrOptions

    with pytest.raises(FormatError) as err:
        import_tldr(src, SimulationPlan(4, 0, 2, "all", 1, 1), TldrOptions(), 0)
    msg = str(err.value)
    assert "batch9.json" in msg and "line 3" in msg and repr(field) in msg, msg


def test_tldr_rejects_invalid_json(tmp_path):
    src = tmp_path / "batch1.json"
    src.write_text(json.dumps(tldr_rows(2)[0]) + "\n{not json\n")
    with pytest.raises(SystemExit, match=r"batch1.json: line 2: not valid JSON"):
        run(["source=tldr", f"input={src}", f"output_dir={tmp_path / 'o'}", *SMALL])


# ----------------------------------------------------------------------------- UltraFeedback

ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def uf_rows(n=60, seed=0):
    """UltraFeedback records with 4 completions and string ratings; some N/A, some aspect objects
    in the older one-element-list shape, a TruthfulQA record and a duplicate instruction."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        comps = []
        for c in range(4):
            ann = {}
            for a in ASPECTS:
                rating = str(int(rng.integers(1, 6)))
                if a == "honesty" and rng.random() < 0.05:
                    rating = "N/A"
                obj = {"Rating": rating, "Rationale": "r"}
                if a in ("truthfulness", "helpfulness"):
                    obj.update({"Type": ["0"] if c % 2 else "None", "Rationale For Rating": "x"})
                ann[a] = [obj] if (i + c) % 7 == 0 else obj
            comps.append({"model": f"m{c}", "principle": "helpfulness", "custom_system_prompt": "s",
                          "response": f"answer {i}.{c} " + "z" * c, "annotations": ann,
                          "critique": "c", "overall_score": 5.0, "fine-grained_score": 3.0})
        rows.append({"source": "evol_instruct", "instruction": f"question {i}?", "models": [f"m{c}" for c in range(4)],
                     "completions": comps, "correct_answers": ["None"], "incorrect_answers": ["None"]})
    rows.append({**rows[0], "source": "truthful_qa", "instruction": "tqa?"})
    rows.append(rows[1])
    return rows


def _uf_ratings(rows) -> dict:
    out = {}
    for r in rows:
        for c in r["completions"]:
            ann = {a: (v[0] if isinstance(v, list) else v) for a, v in c["annotations"].items()}
            out[c["response"]] = {a: ann[a]["Rating"] for a in ASPECTS}
    return out


@pytest.mark.parametrize("variant, groups", [("ufp4", ASPECTS), ("ufp2", ASPECTS[:2])])
def test_ultrafeedback_labels_follow_group_aspect(tmp_path, variant, groups):
    rows = uf_rows()
    src = write_jsonl(tmp_path / "uf" / "evol_instruct.jsonl", rows)
    out = tmp_path / variant
    m = run(["source=ultrafeedback", f"input={src.parent}", f"output_dir={out}",
             f"ultrafeedback.variant={variant}", "n_context=4", *SMALL])
    validate_dataset(out)
    assert m["import"]["dropped_truthful_qa"] == 1 and m["import"]["dropped_duplicate_instruction"] == 1
    texts, ratings = _texts(out), _uf_ratings(rows)
    assert "tqa?" not in read_table(out, "prompts").column("text").to_pylist()
    users = read_table(out, "users")
    group = dict(zip(users.column("user_id").to_pylist(), users.column("group").to_pylist()))
    assert sorted(set(group.values())) == sorted(groups)
    n_strict = 0
    for split in ("train", "test", "fewshot", "test_unseen"):
        for row in read_annotations(out, split).to_pylist():
            rc, rr = ratings[texts[row["chosen_id"]]], ratings[texts[row["rejected_id"]]]
            assert "N/A" not in rc.values() and "N/A" not in rr.values()
            g = group[row["user_id"]]
            assert int(rc[g]) >= int(rr[g]), (row, rc, rr)  # ties go either way (coin)
            n_strict += int(rc[g]) > int(rr[g])
            # every kept pair is controversial across the four aspects (CoPL's -c filter)
            signs = {np.sign(int(rc[a]) - int(rr[a])) for a in ASPECTS}
            assert len(signs - {0}) == 2 or 0 in signs
            if variant == "ufp2" and int(rc["helpfulness"]) != int(rr["helpfulness"]) \
                    and int(rc["honesty"]) != int(rr["honesty"]):
                differ = (int(rc["helpfulness"]) > int(rr["helpfulness"])) != (int(rc["honesty"]) > int(rr["honesty"]))
                assert row["kind"] == ("controversial" if differ else "common")
    assert n_strict > 0


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r["completions"][1]["annotations"]["honesty"].update(Rating="7"),
     "completions[1].annotations.honesty.Rating"),
    (lambda r: r["completions"][2].pop("response"), "completions[2].response"),
    (lambda r: r.update(instruction=["x"]), "instruction"),
    (lambda r: r["completions"][0]["annotations"].update(helpfulness="5"), "completions[0].annotations.helpfulness"),
])
def test_ultrafeedback_rejects_malformed(tmp_path, mutate, field):
    rows = uf_rows(n=5, seed=3)
    for c in rows[3]["completions"]:  # plain dict shape, so the mutations apply
        c["annotations"] = {a: (v[0] if isinstance(v, list) else v) for a, v in c["annotations"].items()}
    mutate(rows[3])
    src = write_jsonl(tmp_path / "flan.jsonl", rows)
    with pytest.raises(SystemExit) as err:
        run(["source=ultrafeedback", f"input={src}", f"output_dir={tmp_path / 'o'}", *SMALL])
    msg = str(err.value)
    assert "flan.jsonl" in msg and "line 4" in msg and repr(field) in msg, msg


def test_ultrafeedback_reads_json_array_files(tmp_path):
    rows = uf_rows(n=40, seed=5)
    (tmp_path / "uf").mkdir()
    (tmp_path / "uf" / "sharegpt.json").write_text(json.dumps(rows))
    out = tmp_path / "o"
    run(["source=ultrafeedback", f"input={tmp_path / 'uf'}", f"output_dir={out}", "n_context=3", *SMALL])
    assert validate_dataset(out).n_annotations["train"] == 40 * 3


# ----------------------------------------------------------------------------- PersonalLLM


def plm_table(n=30, seed=0, offset=0) -> pa.Table:
    rng = np.random.default_rng(seed)
    cols = {"prompt": [f"prompt {offset + i}" for i in range(n)],
            "subset": ["HelpSteer"] * n, "prompt_id": np.arange(offset, offset + n, dtype=np.int64)}
    for k in range(1, 9):
        cols[f"response_{k}"] = [f"resp {offset + i}/{k}" for i in range(n)]
        cols[f"response_{k}_model"] = ["openai/gpt-4o"] * n
    for rm in ALL_REWARD_MODELS:  # RM-major order, as in the released file
        for k in range(1, 9):
            cols[f"response_{k}_{rm}"] = rng.normal(size=n)
    return pa.table(cols)


def test_personalllm_users_follow_their_weights(tmp_path):
    (tmp_path / "plm" / "data").mkdir(parents=True)
    train, test = plm_table(40, 0), plm_table(20, 1, offset=1000)
    pq.write_table(train, tmp_path / "plm" / "data" / "train-00000-of-00001.parquet")
    pq.write_table(test, tmp_path / "plm" / "data" / "test-00000-of-00001.parquet")
    out = tmp_path / "ds"
    m = run(["source=personalllm", f"input={tmp_path / 'plm'}", f"output_dir={out}", "n_context=6", *SMALL])
    validate_dataset(out)
    assert m["import"]["train_prompts"] == 40 and m["import"]["test_prompts"] == 20
    users = read_table(out, "users")
    assert users.column("group").null_count == users.num_rows
    weights = dict(zip(users.column("user_id").to_pylist(),
                       np.array(pq.read_table(out / "users.parquet").column("weights").to_pylist())))
    scores = {}
    for tab, split in ((train, "train"), (test, "test")):
        d = tab.to_pydict()
        for i, pid in enumerate(d["prompt_id"]):
            for k in (5, 6, 7):
                scores[f"plm-{split}-{pid}-r{k}"] = np.array([d[f"response_{k}_{rm}"][i] for rm in COPL_REWARD_MODELS])
    for split in ("train", "test", "fewshot", "test_unseen"):
        for row in read_annotations(out, split).to_pylist():
            sc, sr = scores[row["chosen_id"]], scores[row["rejected_id"]]
            assert (sc > sr).any() and (sc < sr).any(), "a Pareto-dominated pair was kept"
            w = weights[row["user_id"]]
            assert w @ sc >= w @ sr
    assert not (set(read_table(out, "responses").column("response_id").to_pylist())
                - {k for k in scores}), "only responses 5, 6, 7 are used"


def test_personalllm_rejects_missing_column_and_null_score(tmp_path):
    t = plm_table(10)
    pq.write_table(t.drop_columns(["response_6_llama3_sfairx"]), tmp_path / "train.parquet")
    with pytest.raises(SystemExit, match=r"train.parquet: field 'response_6_llama3_sfairx' is missing"):
        run(["source=personalllm", f"input={tmp_path / 'train.parquet'}", f"output_dir={tmp_path / 'o'}", *SMALL])
    col = t.column("response_7_gemma_7b").to_pylist()
    col[4] = None
    bad = t.set_column(t.column_names.index("response_7_gemma_7b"), "response_7_gemma_7b", pa.array(col, pa.float64()))
    pq.write_table(bad, tmp_path / "train.parquet")
    with pytest.raises(SystemExit, match=r"train.parquet: row 4: field 'response_7_gemma_7b' is null"):
        run(["source=personalllm", f"input={tmp_path / 'train.parquet'}", f"output_dir={tmp_path / 'o'}", *SMALL])


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("pool", [5, 1000])
def test_sampling_gives_distinct_pairs_and_exact_counts(pool):
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, size=300)
    user, pair = sample_without_replacement(rng, counts, pool)
    assert (np.bincount(user, minlength=300) == counts).all()
    assert len(np.unique(user * pool + pair)) == len(user)
    assert pair.min() >= 0 and pair.max() < pool


def test_ufp2_group_controversial_only_keeps_disagreeing_pairs(tmp_path):
    src = write_jsonl(tmp_path / "uf" / "ultrachat.jsonl", uf_rows(n=80, seed=7))
    out = tmp_path / "o"
    run(["source=ultrafeedback", f"input={src}", f"output_dir={out}", "ultrafeedback.variant=ufp2",
         "ultrafeedback.group_controversial_only=true", "n_context=3", *SMALL])
    for split in ("train", "test"):
        ann = read_annotations(out, split)
        assert ann.num_rows and set(ann.column("kind").to_pylist()) == {"controversial"}


def test_too_small_pool_is_a_clear_error(tmp_path):
    src = write_jsonl(tmp_path / "c" / "batch3.json", tldr_rows(n_posts=8))
    with pytest.raises(SystemExit, match=r"needs 50 distinct pairs but the pool holds only"):
        run(["source=tldr", f"input={src}", f"output_dir={tmp_path / 'o'}", "n_users=4", "n_test=1"])


def test_import_refuses_to_leave_stale_splits(tmp_path):
    src = write_jsonl(tmp_path / "c" / "batch3.json", tldr_rows())
    out = tmp_path / "ds"
    run(["source=tldr", f"input={src}", f"output_dir={out}", *SMALL])
    with pytest.raises(SystemExit, match=r"annotations/fewshot from an earlier dataset"):
        run(["source=tldr", f"input={src}", f"output_dir={out}", "tldr.users=real_workers", "n_unseen_users=0"])
    validate_dataset(out)  # the earlier dataset is untouched


def test_real_workers_kind_marks_agreement_between_workers(tmp_path):
    def rec(worker, post, a, b, choice, split="train"):
        return {"info": {"post": post}, "summaries": [{"text": a, "policy": "sup2"}, {"text": b, "policy": "sup2"}],
                "choice": choice, "worker": worker, "split": split}

    rows = [rec("A", "p1", " x", " yy", 0), rec("B", "p1", " yy", " x", 1),   # same pair, agree
            rec("A", "p2", " u", " vv", 0), rec("B", "p2", " u", " vv", 1),   # same pair, disagree
            rec("A", "p3", " s", " tt", 1),                                   # one worker only
            rec("A", "p4", " m", " nn", 0, "valid1"), rec("B", "p4", " m", " nn", 0, "valid2")]
    src = write_jsonl(tmp_path / "batch5.json", rows)
    out = tmp_path / "o"
    run(["source=tldr", f"input={src}", f"output_dir={out}", "tldr.users=real_workers"])
    texts = _texts(out)
    prompt_text = dict(zip(*read_table(out, "prompts").to_pydict().values()))
    kinds = {(r["user_id"], prompt_text[r["prompt_id"]], texts[r["chosen_id"]]): r["kind"]
             for s in ("train", "test") for r in read_annotations(out, s).to_pylist()}
    assert kinds == {("A", "p1", " x"): "common", ("B", "p1", " x"): "common",
                     ("A", "p2", " u"): "controversial", ("B", "p2", " vv"): "controversial",
                     ("A", "p3", " tt"): None, ("A", "p4", " m"): "common", ("B", "p4", " m"): "common"}


@pytest.mark.parametrize("source", ["ultrafeedback", "personalllm"])
def test_import_is_deterministic_per_seed(tmp_path, source):
    if source == "ultrafeedback":
        src = write_jsonl(tmp_path / "uf" / "flan.jsonl", uf_rows(n=60, seed=2))
    else:
        src = tmp_path / "plm.parquet"  # one file: the test pool is a seeded share of its prompts
        pq.write_table(plm_table(60, 4), src)
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run([f"source={source}", f"input={src}", f"output_dir={tmp_path / name}", f"seed={seed}",
             "n_context=4", *SMALL])
        outs.append([read_annotations(tmp_path / name, s) for s in ("train", "test", "fewshot", "test_unseen")]
                    + [pq.read_table(tmp_path / name / "users.parquet")])
    assert all(x.equals(y) for x, y in zip(outs[0], outs[1]))
    assert not all(x.equals(y) for x, y in zip(outs[0], outs[2]))
