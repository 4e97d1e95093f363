"""The `recommendations` stage, its top-K search, `lgcd recommend`, and `lgcd export` loaded in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import REPO_ROOT, TINY_YAML
from toy_data import synthetic_inputs

from lgcd_core.config import load_dataset_config
from lgcd_core.protocol.settings import filter_histories, item_domains
from lgcd_core.serving.recommender import Recommender, lgcd_recommender
from lgcd_core.serving.topk import ordered_top_k

LGCD_CLI = str(Path(sys.executable).parent / "lgcd")


# ---- the top-K search ------------------------------------------------------------------------------


def _toy_items(n_a: int, n_b: int) -> pa.Table:
    n = n_a + n_b
    return pa.table({"item_idx": pa.array(range(1, n + 1), pa.int32()), "item_id": [f"i{i}" for i in range(1, n + 1)],
                     "domain": ["A"] * n_a + ["B"] * n_b, "title": [f"title {i}" for i in range(1, n + 1)]})


def _toy_recommender(items: pa.Table, vectors: dict[str, torch.Tensor], users: dict[tuple[int, ...], list[float]],
                     **settings) -> Recommender:
    """User vectors looked up by the history's source-domain items (a stand-in for a model)."""
    domains = item_domains(items)

    def user_vectors(histories: list[list[int]], target: str) -> torch.Tensor:
        return torch.tensor([users[tuple(i for i in h if domains[i] != target)] for h in histories], dtype=torch.float32)

    return Recommender(items, user_vectors, vectors, **settings)


def test_top_k_excludes_what_the_user_has_and_breaks_ties_by_item_idx() -> None:
    items = _toy_items(2, 6)  # A: 1, 2; B: 3..8
    b = torch.tensor([[1.0], [3.0], [2.0], [3.0], [0.5], [3.0]])  # items 3..8: scores 1, 3, 2, 3, .5, 3 for u = 1
    rec = _toy_recommender(items, {"A": torch.ones(2, 1), "B": b}, {(1,): [1.0], (2,): [-1.0], (): [0.0]})
    ids, scores = rec.top_k([[1]], "B", 4)
    assert ids.tolist() == [[4, 6, 8, 5]] and scores.tolist() == [[3.0, 3.0, 3.0, 2.0]]  # ties: lower item_idx first
    # the target-domain items of the history are never recommended (default exclusion); A items never appear
    ids, _ = rec.top_k([[1, 6, 4]], "B", 4)
    assert ids.tolist() == [[8, 5, 3, 7]]
    ids, _ = rec.top_k([[2]], "B", 3)  # u = -1: the lowest scores first
    assert ids.tolist() == [[7, 3, 5]]
    # fewer items left than k: item 0 and -inf
    ids, scores = rec.top_k([[1, 3, 4, 5, 6]], "B", 6)
    assert ids.tolist() == [[8, 7, 0, 0, 0, 0]] and np.isinf(scores[0, 2:]).all()
    # every history item of the domain excluded, k above the domain size: min(k, n) columns
    ids, _ = rec.top_k([[1]], "A", 5)
    assert ids.shape == (1, 2)
    # through item ids, as a service calls it
    assert rec.recommend(["i1", "i6", "unknown"], "B", 2, unknown="ignore") == [("i4", "title 4", 3.0), ("i8", "title 8", 3.0)]
    with pytest.raises(KeyError, match="unknown"):
        rec.recommend(["i1", "unknown"], "B", 2)  # refused by default


def test_ordered_top_k_is_a_stable_sort() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (64, 40), generator=gen).float()  # many ties
    scores[3] = float("-inf")
    values, cols = ordered_top_k(scores, 7)
    expected = torch.sort(scores, dim=1, descending=True, stable=True)
    assert torch.equal(values, expected.values[:, :7])
    assert torch.equal(cols[:3], expected.indices[:3, :7]) and (cols[3] == -1).all()
    with pytest.raises(ValueError, match="NaN"):
        ordered_top_k(torch.tensor([[1.0, float("nan")]]), 1)


def test_faiss_path_equals_exact_path() -> None:
    gen = torch.Generator().manual_seed(1)
    n_a, n_b, dim = 30, 700, 16
    items = _toy_items(n_a, n_b)
    vectors = {"A": torch.randn(n_a, dim, generator=gen), "B": torch.randn(n_b, dim, generator=gen)}
    users = {(i,): torch.randn(dim, generator=gen).tolist() for i in range(1, n_a + 1)}
    rng = np.random.default_rng(0)
    histories = [[int(a), *map(int, rng.choice(np.arange(n_a + 1, n_a + n_b + 1), size=int(rng.integers(0, 30))))]
                 for a in rng.integers(1, n_a + 1, size=150)]
    exact = _toy_recommender(items, vectors, users, faiss_above=10_000, batch_size=32)
    faiss = _toy_recommender(items, vectors, users, faiss_above=50, batch_size=32)  # forced low: B goes through FAISS
    assert faiss.uses_faiss("B") and not faiss.uses_faiss("A") and not exact.uses_faiss("B")
    ids_e, scores_e = exact.top_k(histories, "B", 20)
    ids_f, scores_f = faiss.top_k(histories, "B", 20)
    assert np.array_equal(ids_e, ids_f)
    np.testing.assert_allclose(scores_e, scores_f, rtol=1e-5, atol=1e-5)
    assert not any(set(row) & set(h) for row, h in zip(ids_f.tolist(), histories))
    # and with the forced search modes of one recommender
    assert np.array_equal(exact.top_k(histories, "B", 5, search="faiss")[0], ids_e[:, :5])


# ---- a trained tiny model, its stage run through Dagster --------------------------------------------

TOY = {"n_items_a": 40, "n_items_b": 50, "n_overlap": 60, "n_a_only": 25, "n_b_only": 25, "n_valid": 20, "n_test": 20,
       "seed": 1}


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "LGCD_DATASETS_DIR": str(root / "datasets"), "LGCD_DATA_ROOT": str(root / "data"),
            "DAGSTER_HOME": str(root / "dagster_home"), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny dataset's upstream stage files (toy data, a briefly trained LGCD) and its recommendations stage run."""
    from lgcd_core.io import write_parquet
    from lgcd_core.model.batches import Inputs
    from lgcd_core.model.pretrain import pretrain_encoders
    from lgcd_core.model.train_lgcd import train_lgcd
    from lgcd_pipeline.definitions import build_definitions

    root = tmp_path_factory.mktemp("served")
    torch.set_num_threads(1)
    lgcd = {**TINY_YAML["lgcd"], "training": {**TINY_YAML["lgcd"]["training"], "epochs": 1}}  # a brief training is enough
    yaml_content = {**TINY_YAML, "pretrain": {**TINY_YAML["pretrain"], "epochs": 1}, "lgcd": lgcd,
                    "recommendations": {"k": 8, "faiss_above": 45, "batch_size": 16}}  # B (50 items) goes through FAISS
    (root / "datasets").mkdir()
    (root / "datasets" / "tiny.yaml").write_text(yaml.safe_dump(yaml_content))
    (root / "dagster_home").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in _env(root).items():
            mp.setenv(key, value)
        cfg = load_dataset_config(root / "datasets" / "tiny.yaml")
        data = synthetic_inputs(**TOY)
        n_users = data["sequences"].num_rows + data["eval_cases"].num_rows
        stage = root / "data" / "tiny"
        write_parquet(data["items"], stage / "sequences" / "items.parquet")
        write_parquet(data["sequences"], stage / "sequences" / "sequences.parquet")
        write_parquet(data["eval_cases"], stage / "sequences" / "eval_cases.parquet")
        (stage / "item_text_embeddings").mkdir(parents=True)
        np.save(stage / "item_text_embeddings" / "embeddings.npy", data["embeddings"])
        # users in order of first appearance, as the sequences stage numbered them (toy ids: u<user_idx>)
        write_parquet(pa.table({"user_id": [f"u{i}" for i in range(n_users)]}),
                      stage / "filtered_interactions" / "interactions.parquet")
        quiet = {"log": lambda *_: None}
        pretrain_encoders(cfg, Inputs(**data), stage / "pretrained_encoders", "cpu", **quiet)
        train_lgcd(cfg.lgcd, Inputs(**data), stage / "pretrained_encoders", stage / "lgcd_model", "cpu", **quiet)
        defs = build_definitions([cfg])
        result = dg.materialize(defs.assets, selection=[dg.AssetKey(["tiny", "recommendations"])],
                                instance=dg.DagsterInstance.ephemeral())
        yield {"root": root, "cfg": cfg, "data": data, "stage": stage, "result": result,
               "table": pq.read_table(stage / "recommendations" / "recommendations.parquet")}


def test_the_stage_recommends_k_new_target_items_to_every_user(served) -> None:
    result, table, data = served["result"], served["table"], served["data"]
    assert result.success
    (event,) = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    single = data["sequences"].filter(pa.compute.is_in(data["sequences"]["user_type"], pa.array(["A-only", "B-only"])))
    overlap = data["sequences"].filter(pa.compute.equal(data["sequences"]["user_type"], "overlap"))
    n_users = single.num_rows + overlap.num_rows + data["eval_cases"].num_rows
    n_lists = n_users + overlap.num_rows  # an overlap user gets a list in each domain
    assert meta["users"] == n_lists and meta["users_per_s"] > 0 and meta["k"] == 8
    assert meta["users_by_type"]["overlap"] == 2 * overlap.num_rows
    assert meta["per_domain"]["B"]["search"] == "faiss" and meta["per_domain"]["A"]["search"] == "exact"
    assert meta["sample"].count("\n") == 11 and "| user |" in meta["sample"]  # header, rule, ten users
    assert all(check.passed for check in result.get_asset_check_evaluations())
    assert len(result.get_asset_check_evaluations()) == 3

    rows = table.to_pylist()
    assert table.num_rows == 8 * n_lists and len({r["user_id"] for r in rows}) == n_users
    domains = item_domains(data["items"])
    by_user = {}
    for r in rows:
        by_user.setdefault((r["user_id"], r["target_domain"]), []).append(r)
    types = dict(zip(single.column("user_id").to_pylist(), single.column("user_type").to_pylist()))
    overlap_seqs = dict(zip(overlap.column("user_id").to_pylist(), overlap.column("items").to_pylist()))
    n_train = data["sequences"].num_rows
    cases = {f"u{n_train + c['case_id']}": c for c in data["eval_cases"].to_pylist()}
    for (user, _), recs in by_user.items():
        assert [r["rank"] for r in recs] == list(range(1, 9))
        assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
        target = recs[0]["target_domain"]
        assert all(domains[r["item_idx"]] == target for r in recs)
        if user in types:  # single-domain: the other domain
            assert recs[0]["case_id"] is None and target != types[user][0]
        elif user in overlap_seqs:  # overlap: both domains, none of the items they have
            assert recs[0]["user_type"] == "overlap" and not {r["item_idx"] for r in recs} & set(overlap_seqs[user])
        else:  # held-out: its case's target domain, none of its items
            case = cases[user]
            assert recs[0]["case_id"] == case["case_id"] and target == case["target_domain"]
            assert not {r["item_idx"] for r in recs} & set(case["history"])


def test_held_out_rankings_are_the_evaluations_full_ranking_order(served) -> None:
    """Same model, same history: the stage's list is the evaluation scorer's order of the items the user lacks.

    The stage reads a held-out user's whole history (target-domain items too, ``read_target_history``),
    as the evaluation's ``mixed_history`` setting does with ``lgcd_reads_target_history``.
    """
    from lgcd_core.model.scoring import load_lgcd_scorer

    data, stage, table = served["data"], served["stage"], served["table"]
    items, cases = data["items"], data["eval_cases"]
    domains = item_domains(items)
    scorer = load_lgcd_scorer(stage / "lgcd_model", stage / "pretrained_encoders", data["embeddings"], items, "cpu",
                              read_target_history=True)
    target_domains = np.asarray(cases.column("target_domain").to_pylist())
    histories = filter_histories(cases.column("history"), target_domains, domains, "mixed_history")  # as score_all
    assert any(domains[i] == d for h, d in zip(histories, target_domains) for i in h)  # some users have both histories
    stored = {}
    for r in table.filter(pa.compute.equal(table["user_type"], "held_out")).to_pylist():
        stored.setdefault(r["case_id"], []).append(r)
    compared = 0
    for domain in ("A", "B"):
        mask = target_domains == domain
        scores = scorer([h for h, m in zip(histories, mask) if m], domain).numpy()
        for case, s in zip(cases.filter(pa.array(mask)).to_pylist(), scores):
            # the evaluation's full rank of every item the user lacks: 1 + #(other such items scoring >= it)
            lacks = np.flatnonzero((domains == domain) & ~np.isin(np.arange(len(domains)), case["history"]))
            rank = {int(i): int((s[lacks] >= s[i]).sum()) for i in lacks}  # the count includes the item itself
            recs = stored[case["case_id"]]
            got = [r["item_idx"] for r in recs]
            expected = sorted(lacks.tolist(), key=lambda i: (-s[i], i))[:len(got)]  # ties: the lower item_idx
            assert got == expected, case["case_id"]
            assert [rank[i] for i in got] == list(range(1, len(got) + 1))  # distinct scores here: ranks are positions
            np.testing.assert_allclose([r["score"] for r in recs], s[got], rtol=1e-5, atol=1e-5)
            compared += 1
    assert compared == cases.num_rows


# ---- lgcd recommend ------------------------------------------------------------------------------


def _cli(served, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LGCD_CLI, *args], env=_env(served["root"]), capture_output=True, text=True, timeout=120)


def test_lgcd_recommend_prints_history_and_recommendations(served) -> None:
    table = served["table"]
    user = table.filter(pa.compute.equal(table["user_type"], "A-only"))["user_id"][0].as_py()
    recs = table.filter(pa.compute.equal(table["user_id"], user)).sort_by("rank").to_pylist()
    proc = _cli(served, "recommend", "--dataset", "tiny", "--user", user, "-k", "3")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"user {user} (A-only)" in out and "Grocery (A):" in out and "Kitchen (B): none" in out
    assert "Kitchen (B) items, scored from the Grocery items;" in out
    assert all(r["title"] in out for r in recs[:3]) and recs[3]["title"] + "  [" not in out
    assert f"{recs[0]['score']:8.4f}" in out

    proc = _cli(served, "recommend", "--dataset", "tiny", "--user", user, "--json")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["kind"] == "user" and lines[0]["target_domains"] == ["B"]
    assert [x["item_id"] for x in lines if x["kind"] == "recommendation"] == [r["item_id"] for r in recs]
    assert all(x["domain"] == "A" for x in lines if x["kind"] == "history")

    held_rows = table.filter(pa.compute.equal(table["user_type"], "held_out")).to_pylist()
    cases = {c["case_id"]: c for c in served["data"]["eval_cases"].to_pylist()}
    domains = item_domains(served["data"]["items"])
    both = next(r for r in held_rows if any(domains[i] == r["target_domain"] for i in cases[r["case_id"]]["history"]))
    proc = _cli(served, "recommend", "--dataset", "tiny", "--user", both["user_id"])
    names = {"A": "Grocery", "B": "Kitchen"}
    own = names[both["target_domain"]]
    assert proc.returncode == 0 and "held-out user" in proc.stdout
    assert f"and the user's own {own} items;" in proc.stdout  # it says what it read (read_target_history)

    ov = table.filter(pa.compute.equal(table["user_type"], "overlap"))["user_id"][0].as_py()
    proc = _cli(served, "recommend", "--dataset", "tiny", "--user", ov, "-k", "2")
    assert proc.returncode == 0 and "top 2 Grocery (A) items" in proc.stdout and "top 2 Kitchen (B) items" in proc.stdout

    proc = _cli(served, "users", "--dataset", "tiny", "--limit", "3")
    assert proc.returncode == 0, proc.stderr
    for kind in ("A-only", "B-only", "overlap", "held_out"):
        assert any(line.startswith(f"{kind}: ") for line in proc.stdout.splitlines())
    assert ov in proc.stdout or "more)" in proc.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("--dataset", "tiny", "--user", "nobody"), "lgcd: no user 'nobody' in tiny's recommendations"),
    (("--dataset", "tiny", "--user", "nobody"), "`lgcd users --dataset tiny` lists the user ids"),
    (("--dataset", "nope", "--user", "u1"), "lgcd: no dataset 'nope'"),
])
def test_lgcd_recommend_refuses_an_unknown_user_or_dataset_in_one_line(served, args, message) -> None:
    proc = _cli(served, "recommend", *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("lgcd: ") and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


# ---- lgcd export, loaded in a fresh process --------------------------------------------------------


def test_export_round_trip_in_a_fresh_process(served, tmp_path: Path) -> None:
    data, stage = served["data"], served["stage"]
    out = tmp_path / "export"
    proc = _cli(served, "export", "--dataset", "tiny", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "lgcd-export/1" and config["dataset"] == "tiny"
    sums = {line.split("  ")[1] for line in (out / "SHA256SUMS").read_text().splitlines()}
    assert {"lgcd.safetensors", "encoder_A.safetensors", "encoder_B.safetensors", "items.parquet", "config.json"} <= sums
    assert pq.read_table(out / "items.parquet").column_names == ["item_idx", "item_id", "domain", "title", "vector"]

    history = ["i3", "i7", "i12", "i55"]  # three Grocery items and a Kitchen item the user has
    script = (
        "import json, sys\n"
        "from lgcd_core.serving.exported import load\n"
        f"rec = load({str(out)!r})\n"
        f"print(json.dumps(rec.recommend({history!r}, 'B', 5)))\n"
        "print(json.dumps(sorted(m for m in ('dagster', 'lgcd_pipeline') if m in sys.modules)))\n"
    )
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path, env={k: v for k, v in os.environ.items() if not k.startswith("LGCD_")})
    assert fresh.returncode == 0, fresh.stderr
    first, loaded = fresh.stdout.splitlines()
    served_list = json.loads(first)
    assert json.loads(loaded) == []  # no Dagster in the service
    assert config["recommendations"]["read_target_history"] is True  # the Kitchen item i55 is read, not recommended
    args = (stage / "lgcd_model", stage / "pretrained_encoders", data["embeddings"], data["items"], "cpu")
    expected = lgcd_recommender(*args, read_target_history=True).recommend(history, "B", 5)
    assert [x[0] for x in served_list] == [x[0] for x in expected] and "i55" not in [x[0] for x in served_list]
    np.testing.assert_allclose([x[2] for x in served_list], [x[2] for x in expected], rtol=1e-5, atol=1e-5)
    source_only = lgcd_recommender(*args).recommend(history, "B", 5)
    assert [x[2] for x in source_only] != [x[2] for x in expected]  # reading i55 changes the scores
    # a second export replaces the first; a folder that is not an export is never overwritten
    assert _cli(served, "export", "--dataset", "tiny", "--out", str(out)).returncode == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    proc = _cli(served, "export", "--dataset", "tiny", "--out", str(tmp_path / "mine"))
    assert proc.returncode == 2 and "not an earlier `lgcd export` folder" in proc.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    # an edited export is refused on load (checksums over every file, config.json included); verify=False skips it
    from lgcd_core.io import DataError
    from lgcd_core.serving.exported import load

    meta = json.loads((out / "lgcd.json").read_text())
    meta["lgcd"]["diffusion"]["lambda_B"] = 0.9
    (out / "lgcd.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"lgcd\.json: changed since the export"):
        load(out)
    load(out, verify=False)
    with pytest.raises(KeyError, match="NOPE"):
        load(out, verify=False).recommend(["NOPE"], "B", 3)


def test_readme_documents_the_stage_and_its_commands() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "| `recommendations` | serving |" in readme
    assert "lgcd recommend --dataset" in readme and "lgcd export --dataset" in readme
