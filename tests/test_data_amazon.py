"""Amazon 2014 / 2018 / 2023 readers on small fixture files, and their errors on bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lgcd_core.config import DatasetConfig
from lgcd_core.data.readers import read_interactions, read_items, table_stats
from lgcd_core.io import DataError


def write_lines(path: Path, lines: list[str]) -> Path:
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def amazon_cfg(folder: Path, version: int, files: dict, **source) -> DatasetConfig:
    return DatasetConfig.model_validate(
        {
            "name": "t",
            "source": {"format": "amazon", "path": str(folder), "amazon_version": version, "files": files, **source},
            "domains": {"A": "Food", "B": "Kitchen"},
        }
    )


def review(user: str, item: str, t: int, **extra) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": t, "overall": 5.0, **extra})


def meta18(item: str, title: str | None, brand: str | None = None, cats: list | None = None) -> str:
    record = {"asin": item, "category": cats or []}
    if title is not None:
        record["title"] = title
    if brand is not None:
        record["brand"] = brand
    return json.dumps(record)


def files(reviews_a: str, meta_a: str, reviews_b: str, meta_b: str) -> dict:
    return {"A": {"reviews": reviews_a, "meta": meta_a}, "B": {"reviews": reviews_b, "meta": meta_b}}


@pytest.fixture
def ds2018(tmp_path: Path) -> DatasetConfig:
    write_lines(tmp_path / "ra.json.gz", [review("u1", "a1", 30), review("u1", "a2", 10), review("u2", "a1", 5),
                                          review("u1", "a1", 20)])  # fmt: skip
    write_lines(tmp_path / "ma.json", [meta18("a1", "Green Tea", "Leafy", ["Grocery", "Tea"]), meta18("a2", None, "Acme")])
    write_lines(tmp_path / "rb.json", [review("u1", "b1", 40)])
    write_lines(tmp_path / "mb.json.gz", [meta18("b1", "Teapot", None, ["Kitchen"]), meta18("b1", "Duplicate line")])
    return amazon_cfg(tmp_path, 2018, files("ra.json.gz", "ma.json", "rb.json", "mb.json.gz"))


def test_2018_reader_dedupes_keeps_earliest_and_builds_text(ds2018: DatasetConfig) -> None:
    table = read_interactions(ds2018)
    rows = table.to_pylist()
    assert [(r["user_id"], r["item_id"], r["domain"], r["timestamp"]) for r in rows] == [
        ("u1", "a2", "A", 10), ("u2", "a1", "A", 5), ("u1", "a1", "A", 20), ("u1", "b1", "B", 40)
    ]  # fmt: skip
    assert rows[2]["origin"] == "ra.json.gz:4" and rows[0]["split_hint"] is None
    assert table_stats(table)["A"]["duplicates_removed"] == 1
    items = {r["item_id"]: r for r in read_items(ds2018, table).to_pylist()}
    assert items["a1"]["text"] == "Green Tea. Brand: Leafy. Category: Grocery > Tea"
    assert items["a1"]["categories"] == "Grocery > Tea" and items["a1"]["has_title"]
    assert items["a2"]["title"] == "Food item a2" and not items["a2"]["has_title"]
    assert items["b1"]["title"] == "Teapot"  # first metadata line wins


def test_2014_reader_parses_python_literal_metadata(tmp_path: Path) -> None:
    tricky = (
        "{'asin': 'a1', 'title': \"Lay's \\\"Classic\\\" Chips \\u00e9\", 'price': 3.5, "
        "'related': {'also_bought': ['x', 'y']}, 'salesRank': {'Grocery': 12}, "
        "'categories': [['Grocery & Gourmet Food', 'Snacks'], ['Grocery & Gourmet Food', \"Kid's\"]], 'brand': None}"
    )
    write_lines(tmp_path / "ra.json", [review("u1", "a1", 1), "", review("u2", "a1", 2)])
    write_lines(tmp_path / "ma.gz", [tricky])
    write_lines(tmp_path / "rb.json.gz", [review("u1", "b1", 3)])
    write_lines(tmp_path / "mb", ["{'asin': 'b1', 'title': 'Pan', 'categories': [['Kitchen']]}"])
    cfg = amazon_cfg(tmp_path, 2014, files("ra.json", "ma.gz", "rb.json.gz", "mb"))
    table = read_interactions(cfg)
    assert table["origin"].to_pylist() == ["ra.json:1", "ra.json:3", "rb.json.gz:1"]  # blank line keeps numbering
    items = {r["item_id"]: r for r in read_items(cfg, table).to_pylist()}
    assert items["a1"]["title"] == 'Lay\'s "Classic" Chips \u00e9'
    assert items["a1"]["categories"] == "Grocery & Gourmet Food > Snacks > Kid's"
    assert items["a1"]["brand"] is None and items["b1"]["text"] == "Pan. Category: Kitchen"


def test_2023_reader_uses_parent_asin_and_millisecond_timestamps(tmp_path: Path) -> None:
    def r23(user: str, asin: str, parent: str, ms: int) -> str:
        return json.dumps({"user_id": user, "asin": asin, "parent_asin": parent, "timestamp": ms, "rating": 4.0})

    def m23(parent: str, title: str, store: str) -> str:
        return json.dumps({"parent_asin": parent, "title": title, "store": store, "categories": ["Home", "Mugs"]})

    write_lines(tmp_path / "ra.jsonl.gz", [r23("u1", "c1", "p1", 1_600_000_000_123),
                                           r23("u1", "c2", "p1", 1_500_000_000_999)])  # fmt: skip
    write_lines(tmp_path / "ma.jsonl", [m23("p1", "Mug", "MugCo")])
    write_lines(tmp_path / "rb.jsonl", [r23("u1", "c3", "p2", 1_700_000_000_000)])
    write_lines(tmp_path / "mb.jsonl.gz", [m23("p2", "Kettle", "KetCo")])
    cfg = amazon_cfg(tmp_path, 2023, files("ra.jsonl.gz", "ma.jsonl", "rb.jsonl", "mb.jsonl.gz"))
    table = read_interactions(cfg)
    assert table.to_pylist()[0] | {"origin": None} == {
        "user_id": "u1", "item_id": "p1", "domain": "A", "timestamp": 1_500_000_000, "split_hint": None, "origin": None
    }  # fmt: skip
    assert table.num_rows == 2  # two variants of one parent: one interaction, the earliest
    items = {r["item_id"]: r for r in read_items(cfg, table).to_pylist()}
    assert items["p2"]["brand"] == "KetCo" and items["p1"]["text"] == "Mug. Brand: MugCo. Category: Home > Mugs"


# ---- bad input ---------------------------------------------------------------------------------


def _simple(tmp_path: Path, reviews_a: list[str], meta_a: list[str], name_a: str = "ra.json", **source) -> DatasetConfig:
    write_lines(tmp_path / name_a, reviews_a)
    write_lines(tmp_path / "ma.json", meta_a)
    write_lines(tmp_path / "rb.json", [review("u1", "b1", 1)])
    write_lines(tmp_path / "mb.json", [meta18("b1", "Pan")])
    return amazon_cfg(tmp_path, 2018, files(name_a, "ma.json", "rb.json", "mb.json"), **source)


def test_truncated_gzip_names_file_and_line(tmp_path: Path) -> None:
    cfg = _simple(tmp_path, [review(f"u{i}", "a1", i) for i in range(20000)], [meta18("a1", "Tea")], "ra.json.gz")
    data = (tmp_path / "ra.json.gz").read_bytes()
    (tmp_path / "ra.json.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"ra\.json\.gz: truncated or corrupt gzip stream after line \d+"):
        read_interactions(cfg)


def test_malformed_json_line_names_line(tmp_path: Path) -> None:
    cfg = _simple(tmp_path, [review("u1", "a1", 1), "", '{"reviewerID": "u2", "asin": "a1"', review("u3", "a1", 1)],
                  [meta18("a1", "Tea")])  # fmt: skip
    with pytest.raises(DataError, match=r"ra\.json:3: malformed JSON"):
        read_interactions(cfg)


def test_missing_field_and_bad_timestamp_name_line_and_field(tmp_path: Path) -> None:
    cfg = _simple(tmp_path, [review("u1", "a1", 1), json.dumps({"reviewerID": "u2", "unixReviewTime": 3})],
                  [meta18("a1", "Tea")])  # fmt: skip
    with pytest.raises(DataError, match=r"ra\.json:2: field 'asin' missing"):
        read_interactions(cfg)
    cfg = _simple(tmp_path, [review("u1", "a1", "yesterday")], [meta18("a1", "Tea")])
    with pytest.raises(DataError, match=r"ra\.json:1: field 'unixReviewTime' is not a number"):
        read_interactions(cfg)


def test_missing_metadata_error_or_drop(tmp_path: Path) -> None:
    reviews = [review("u1", "a1", 1), review("u1", "zz", 2), review("u2", "zz", 3)]
    cfg = _simple(tmp_path, reviews, [meta18("a1", "Tea")])
    with pytest.raises(DataError, match=r"ra\.json:2: item 'zz' has no metadata in .*ma\.json \(2 reviews of 1 items"):
        read_interactions(cfg)
    cfg = _simple(tmp_path, reviews, [meta18("a1", "Tea")], missing_metadata="drop")
    table = read_interactions(cfg)
    assert table["item_id"].to_pylist() == ["a1", "b1"]
    assert table_stats(table)["A"]["dropped_missing_metadata"] == 2


def test_literal_metadata_is_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    write_lines(tmp_path / "ra.json", [review("u1", "a1", 1)])
    write_lines(tmp_path / "ma", ["{'asin': 'a1', 'title': 'ok'}", f"__import__('os').system('touch {marker}')"])
    write_lines(tmp_path / "rb.json", [review("u1", "b1", 1)])
    write_lines(tmp_path / "mb", ["{'asin': 'b1', 'title': 'Pan'}"])
    cfg = amazon_cfg(tmp_path, 2014, files("ra.json", "ma", "rb.json", "mb"))
    with pytest.raises(DataError, match=r"ma:2: not a Python literal dict"):
        read_interactions(cfg)
    assert not marker.exists()


def test_missing_source_folder_fails_on_read_not_on_load(tmp_path: Path) -> None:
    cfg = amazon_cfg(tmp_path / "nowhere", 2018, files("a", "b", "c", "d"), path_env="LGCD_TEST_AMAZON_DIR")
    with pytest.raises(FileNotFoundError, match=r"nowhere.*'source\.path' or environment variable LGCD_TEST_AMAZON_DIR"):
        read_interactions(cfg)
    with pytest.raises(FileNotFoundError, match=r"ra\.json.*source\.files\.A\.reviews"):
        read_interactions(amazon_cfg(tmp_path, 2018, files("ra.json", "b", "c", "d")))
