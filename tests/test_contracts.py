"""Item ids are checked against the item index and the domain a table claims (issue 24 point 3)."""

import pyarrow as pa
import pytest

from lgcd_core.data.contracts import check_items, check_sequence_tables
from lgcd_core.io import DataError
from lgcd_core.protocol.settings import item_domains

ITEMS = pa.table({"item_idx": pa.array([1, 2, 3, 4], pa.int32()), "domain": ["A", "A", "B", "B"]})
DOMAINS = item_domains(ITEMS)


def _grounded(items: list[list[int]], domains: list[str]) -> pa.Table:
    return pa.table({"user_idx": list(range(len(items))), "target_domain": domains,
                     "items": pa.array(items, pa.list_(pa.int32()))})


@pytest.mark.parametrize("items, domains, says", [
    ([[3, 4], [3, 999999]], ["B", "B"], "column 'items', row 1: item id 999999 is not in the item index (1..4)"),
    ([[3], [4, -7]], ["B", "B"], "row 1: item id -7 is not in the item index"),
    ([[3, 4], [4], [1, 3]], ["B", "B", "B"], "row 2: item id 1 is in domain A, the row claims domain B"),
    ([[0]], ["A"], "row 0: item id 0 is not in the item index"),
])
def test_a_bad_item_id_names_the_file_the_column_and_the_first_bad_row(items, domains, says):
    with pytest.raises(DataError) as err:
        check_items(_grounded(items, domains), "items", DOMAINS, "grounded_items.parquet", domain_column="target_domain")
    assert str(err.value).startswith("grounded_items.parquet: ") and says in str(err.value)


def test_good_tables_pass_and_only_marked_items_must_be_in_the_row_domain():
    check_items(_grounded([[3, 4], [4]], ["B", "B"]), "items", DOMAINS, "g.parquet", domain_column="target_domain")
    pseudo = pa.table({"target_domain": ["B"], "items": pa.array([[1, 3, 2]], pa.list_(pa.int32())),
                       "is_pseudo": [[False, True, False]]})
    check_items(pseudo, "items", DOMAINS, "p.parquet", domain_column="target_domain", only="is_pseudo")
    wrong = pseudo.set_column(2, "is_pseudo", pa.array([[True, True, False]]))
    with pytest.raises(DataError, match="row 0: item id 1 is in domain A"):
        check_items(wrong, "items", DOMAINS, "p.parquet", domain_column="target_domain", only="is_pseudo")


def test_sequence_tables_check_histories_and_targets(tmp_path):
    sequences = pa.table({"user_idx": [0], "items": pa.array([[1, 3]], pa.list_(pa.int32()))})
    cases = pa.table({"case_id": [0, 1], "history": pa.array([[1], [2, 3]], pa.list_(pa.int32())),
                      "target": pa.array([3, 2], pa.int32()), "target_domain": ["B", "B"]})
    with pytest.raises(DataError, match=r"eval_cases\.parquet: column 'target', row 1: item id 2 is in domain A"):
        check_sequence_tables(ITEMS, sequences, cases, tmp_path)
    check_sequence_tables(ITEMS, sequences, cases.slice(0, 1), tmp_path)
