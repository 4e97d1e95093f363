"""LLMCDSR reader on a tiny fixture folder, the restricted unpickler, and the real Food-Kitchen figures."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from lgcd_core.config import REPO_ROOT, DatasetConfig, SplitConfig
from lgcd_core.data.kcore import apply_filters
from lgcd_core.data.readers import read_interactions, read_items, table_stats
from lgcd_core.data.safe_pickle import load_str_dict
from lgcd_core.data.sequences import build_sequences, check_ids_in_index, sequence_stats
from lgcd_core.io import DataError

FOOD_KITCHEN = Path(
    os.environ.get("LGCD_FOOD_KITCHEN_DIR", str(REPO_ROOT.parent / "shared" / "data" / "llmcdsr" / "food-kitchen"))
)


def llmcdsr_cfg(folder: Path) -> DatasetConfig:
    return DatasetConfig.model_validate(
        {
            "name": "t",
            "source": {"format": "llmcdsr", "path": str(folder)},
            "domains": {"A": "Food", "B": "Kitchen"},
            "filter": {"k_core": None},
        }
    )


def write_fixture(folder: Path, with_b: bool = True) -> Path:
    """3 A items, 2 B items (global ids 3, 4); B titles and train_B optional."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "num.txt").write_text("3\n2\n")
    pickle.dump({"a0": 0, "a1": 1, "a2": 2}, open(folder / "item_set_A.pkl", "wb"))
    pickle.dump({"b0": 0, "b1": 1}, open(folder / "item_set_B.pkl", "wb"))
    pickle.dump({"a0": "Green tea", "a1": "Pasta", "a2": ""}, open(folder / "text_A.pkl", "wb"))
    (folder / "train_A.txt").write_text("1\t0,1,2\n2\t2,1\n")
    (folder / "train_overlap.txt").write_text("1\t0,3,1,4\n")
    (folder / "valid.txt").write_text("1\t0,1,3\n2\t3,4,2\n")
    if with_b:
        pickle.dump({"b0": "Teapot", "b1": "Kettle"}, open(folder / "text_B.pkl", "wb"))
        (folder / "train_B.txt").write_text("7\t3,4\n")
    return folder


def test_reader_maps_global_ids_users_and_splits(tmp_path: Path) -> None:
    cfg = llmcdsr_cfg(write_fixture(tmp_path))
    table = read_interactions(cfg)
    rows = table.to_pylist()
    assert rows[0] == {"user_id": "train_A:1", "item_id": "a0", "domain": "A", "timestamp": 0, "split_hint": "train",
                       "origin": "train_A.txt:1"}  # fmt: skip
    overlap = [(r["item_id"], r["domain"], r["timestamp"]) for r in rows if r["user_id"] == "train_overlap:1"]
    assert overlap == [("a0", "A", 0), ("b0", "B", 1), ("a1", "A", 2), ("b1", "B", 3)]
    assert {r["split_hint"] for r in rows if r["user_id"].startswith("valid:")} == {"valid"}
    stats = table_stats(table)
    assert stats["missing_files"] == ["test.txt"] and stats["lines"]["train_B.txt"] == 1

    items = read_items(cfg, table)
    assert items["source_index"].to_pylist() == [0, 1, 2, 3, 4]
    assert items["title"].to_pylist() == ["Green tea", "Pasta", "Food item a2", "Teapot", "Kettle"]
    assert items["has_title"].to_pylist() == [True, True, False, True, True]

    data = build_sequences(apply_filters(table, items, cfg.filter), items, SplitConfig())
    assert data.items["item_id"].to_pylist() == ["a0", "a1", "a2", "b0", "b1"]  # item_idx = global id + 1
    cases = data.eval_cases.to_pylist()
    assert [(c["history"], c["target"], c["target_domain"]) for c in cases] == [([1, 2], 4, "B"), ([4, 5], 3, "A")]
    types = dict(zip(data.sequences["user_id"].to_pylist(), data.sequences["user_type"].to_pylist()))
    assert types == {"train_A:1": "A-only", "train_A:2": "A-only", "train_B:7": "B-only", "train_overlap:1": "overlap"}
    assert check_ids_in_index(data)[0]


def test_missing_optional_files_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = llmcdsr_cfg(write_fixture(tmp_path, with_b=False))
    table = read_interactions(cfg)
    assert set(table_stats(table)["missing_files"]) == {"train_B.txt", "test.txt"}
    items = read_items(cfg, table)
    assert table_stats(items)["missing_files"] == ["text_B.pkl"] and table_stats(items)["B"]["without_title"] == 2
    assert items["title"].to_pylist()[3:] == ["Kitchen item b0", "Kitchen item b1"]
    assert "train_B.txt: missing" in caplog.text and "text_B.pkl: missing" in caplog.text


def test_bad_sequence_lines_name_file_and_line(tmp_path: Path) -> None:
    folder = write_fixture(tmp_path)
    (folder / "train_overlap.txt").write_text("1\t0,3\n2\t0,x\n")
    with pytest.raises(DataError, match=r"train_overlap\.txt:2: expected '<uid>\\t<id>,<id>,...'"):
        read_interactions(llmcdsr_cfg(folder))
    (folder / "train_overlap.txt").write_text("1\t0,9\n")
    with pytest.raises(DataError, match=r"train_overlap\.txt:1: item id 9 outside 0\.\.4"):
        read_interactions(llmcdsr_cfg(folder))


def test_missing_folder_fails_only_when_read(tmp_path: Path) -> None:
    cfg = llmcdsr_cfg(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"absent.*source\.path"):
        read_interactions(cfg)


# ---- restricted unpickler ----------------------------------------------------------------------


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_safe_pickle_refuses_code_execution(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for protocol in (0, 2, 5):
        path = tmp_path / f"evil{protocol}.pkl"
        path.write_bytes(pickle.dumps({"a": _Exploit(marker)}, protocol=protocol))
        with pytest.raises(DataError, match=rf"evil{protocol}\.pkl: refused pickle opcode"):
            load_str_dict(path)
    assert not marker.exists()


def test_safe_pickle_accepts_str_int_dicts_and_refuses_other_types(tmp_path: Path) -> None:
    ok = tmp_path / "ok.pkl"
    ok.write_bytes(pickle.dumps({"B00X": 3, "B00Y": "title", 7: "x"}, protocol=4))
    assert load_str_dict(ok) == {"B00X": 3, "B00Y": "title", 7: "x"}
    ok.write_bytes(pickle.dumps({"a": 1}, protocol=0))
    assert load_str_dict(ok) == {"a": 1}
    for name, obj, expected in [("list.pkl", [1, 2], "opcode"), ("float.pkl", {"a": 1.5}, "opcode")]:
        path = tmp_path / name
        path.write_bytes(pickle.dumps(obj))
        with pytest.raises(DataError, match=rf"{name}: refused pickle {expected}"):
            load_str_dict(path)
    top = tmp_path / "str.pkl"
    top.write_bytes(pickle.dumps("just a string"))
    with pytest.raises(DataError, match=r"str\.pkl: expected a pickled dict, got str"):
        load_str_dict(top)
    nested = tmp_path / "nested.pkl"
    nested.write_bytes(pickle.dumps({"a": {"b": 1}}))
    with pytest.raises(DataError, match=r"nested\.pkl: expected str/int keys and values"):
        load_str_dict(nested)
    truncated = tmp_path / "trunc.pkl"
    truncated.write_bytes(pickle.dumps({"a": 1, "b": 2})[:-4])
    with pytest.raises(DataError, match=r"trunc\.pkl"):
        load_str_dict(truncated)


# ---- the real data (read-only) -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not FOOD_KITCHEN.is_dir(), reason=f"{FOOD_KITCHEN} absent (set LGCD_FOOD_KITCHEN_DIR)")
def test_food_kitchen_figures() -> None:
    cfg = llmcdsr_cfg(FOOD_KITCHEN)
    table = read_interactions(cfg)
    lines = table_stats(table)["lines"]
    assert (lines["train_A.txt"], lines["train_B.txt"], lines["train_overlap.txt"]) == (5472, 38191, 7501)
    items = read_items(cfg, table)
    data = build_sequences(apply_filters(table, items, cfg.filter), items, cfg.split)
    stats = sequence_stats(data)
    assert stats["items"] == {"A": 8661, "B": 27637}
    assert stats["users"] == {"overlap": 7501, "A-only": 5472, "B-only": 38191}
    assert stats["eval_cases"]["valid"] == {"A": 363, "B": 597}
    assert data.items["domain"].to_pylist()[8660:8662] == ["A", "B"]
    assert check_ids_in_index(data)[0]
