"""The plain `interactions` source (issue 25 point 6): an interactions file and an items file, CSV or Parquet,
the same contracts and one-line errors as the other readers, and a real run of the data stages."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY_YAML, write_dataset_yaml

from lgcd_core.config import load_dataset_config
from lgcd_core.data import interactions
from lgcd_core.io import DataError

NAMES = {"A": "Books", "B": "Movies"}


def _synthetic(folder: Path, n_users: int = 60, seed: int = 0) -> None:
    """Users with books and movies drawn from two tastes, as the ten-line example of the README."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = ["item,domain,title"] + [f"b{i},Books,Book {i} about {'space' if i % 2 else 'cooking'}" for i in range(20)] \
        + [f"m{i},B,Movie {i}" for i in range(20)]
    (folder / "items.csv").write_text("\n".join(items) + "\n")
    rows = ["user,item,timestamp,domain"]
    for u in range(n_users):
        taste = u % 2
        for t in range(8):
            domain = "A" if (t + u) % 3 else "B"
            item = f"{'b' if domain == 'A' else 'm'}{2 * int(rng.integers(0, 10)) + taste}"
            rows.append(f"0{u},{item},{1_700_000_000 + 3600 * t},{domain}")
    (folder / "interactions.csv").write_text("\n".join(rows) + "\n")


def test_reads_csv_with_ids_as_text_and_domain_names(tmp_path):
    _synthetic(tmp_path)
    table, stats = interactions.read_interactions(tmp_path, NAMES)
    items, _ = interactions.read_items(tmp_path, NAMES)
    assert table.column("user_id")[0].as_py() == "00"  # a leading zero survives: ids are text
    assert set(table.column("domain").to_pylist()) == {"A", "B"} and set(items.column("domain").to_pylist()) == {"A", "B"}
    assert stats["rows"] == 480 and table.num_rows == 480 - stats["duplicates_removed"]
    assert items.column("text").to_pylist()[0] == "Book 0 about cooking"


def test_parquet_gives_the_same_tables(tmp_path):
    _synthetic(tmp_path / "csv")
    (tmp_path / "pq").mkdir()
    from pyarrow import csv

    for stem in ("interactions", "items"):
        pq.write_table(csv.read_csv(tmp_path / "csv" / f"{stem}.csv"), tmp_path / "pq" / f"{stem}.parquet")
    a, _ = interactions.read_interactions(tmp_path / "csv", NAMES)
    b, _ = interactions.read_interactions(tmp_path / "pq", NAMES)
    assert a.drop_columns(["origin", "user_id"]).equals(b.drop_columns(["origin", "user_id"]))


BAD = [
    ("interactions.csv", "user,item,timestamp\n1,b1,5\n", "missing columns ['domain']"),
    ("interactions.csv", "user,item,timestamp,domain\n1,b1,5,A\n2,b2,5,Games\n", "row 2, field 'domain': 'Games'"),
    ("interactions.csv", "user,item,timestamp,domain\n1,b1,5,A\n2,b2,yesterday,A\n", "row 2, field 'timestamp'"),
    ("interactions.csv", "user,item,timestamp,domain\n1,b1,5,A\n,b2,6,A\n", "row 2, field 'user': empty"),
    ("interactions.csv", "user,item,timestamp,domain\n1,zz,5,A\n", "row 1, field 'item': 'zz' (domain A) is not in"),
    ("interactions.csv", b"user,item,timestamp,domain\n1,b\xff\xfe,5,A\n", "cannot be read as CSV"),
    ("items.csv", "item,domain,title\nb1,A,x\nb1,Books,y\n", "row 2, field 'item': 'b1' is listed twice in domain A"),
]


@pytest.mark.parametrize("name, content, says", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_input_is_one_error_naming_file_row_and_field(tmp_path, name, content, says):
    _synthetic(tmp_path)
    data = content if isinstance(content, bytes) else content.encode()
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError) as err:
        interactions.read_interactions(tmp_path, NAMES)
    assert str(err.value).startswith(str(tmp_path / name)) and says in str(err.value)


def test_one_file_of_each_kind(tmp_path):
    _synthetic(tmp_path)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "items.parquet")
    with pytest.raises(DataError, match="expected one of items.csv or items.parquet, found both"):
        interactions.read_items(tmp_path, NAMES)


def test_the_data_stages_run_on_it(tmp_path, monkeypatch):
    from pipeline_helpers import DATA_STAGES, materialize

    _synthetic(tmp_path / "raw", n_users=120)
    content = {**TINY_YAML, "source": {"format": "interactions", "path": str(tmp_path / "raw")},
               "domains": NAMES, "filter": {"k_core": 2}}
    write_dataset_yaml(tmp_path / "datasets", "tiny", content)
    monkeypatch.setenv("LGCD_DATASETS_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("LGCD_DATA_ROOT", str(tmp_path / "data"))
    load_dataset_config(tmp_path / "datasets" / "tiny.yaml")
    result = materialize(DATA_STAGES, dg.DagsterInstance.ephemeral())
    assert result.success
    cases = pq.read_table(tmp_path / "data" / "tiny" / "sequences" / "eval_cases.parquet")
    seqs = pq.read_table(tmp_path / "data" / "tiny" / "sequences" / "sequences.parquet")
    assert cases.num_rows > 0 and set(cases.column("split").to_pylist()) == {"valid", "test"}
    assert "overlap" in set(seqs.column("user_type").to_pylist())
