import pyarrow as pa

from lgcd_core.evaluation.report import plot_metrics, render_report
from lgcd_core.protocol.ranking import METRICS_SCHEMA

SUMMARY = {"dataset": "toy", "domains": {"A": "Food", "B": "Kitchen"}, "n_negatives": 999, "candidate_seed": 7,
           "seeds": [0, 1], "lgcd_reads_target_history": False}


def _metrics() -> pa.Table:
    rows = []
    for seed, value in ((0, 0.2), (1, 0.4)):
        for protocol in ("sampled999", "full"):
            for setting in ("inter_domain", "mixed_history"):
                for domain in ("A", "B"):
                    for metric in ("HR", "NDCG"):
                        for k in (5, 10):
                            rows.append({"model": "sasrec_mixed", "target_domain": domain, "split": "valid",
                                         "metric": metric, "k": k, "value": value, "seed": seed, "n_cases": 3,
                                         "protocol": protocol, "setting": setting})
    return pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)


def test_report_states_protocol_beside_every_table_and_mean_std():
    paper = {"LGCD (paper)": {"split": "test", "setting": "inter_domain", "values": {"A:HR@10": 0.4}}}
    text = render_report(_metrics(), SUMMARY, paper)
    sections = text.split("## ")[1:]
    assert len(sections) == 4
    for section in sections:
        assert "999 negatives" in section or "every other item" in section
        assert "ties count against the model" in section and "never test" in section
        assert "| sasrec_mixed |" in section
    assert "without replacement" in sections[0] and "excluding the target" in sections[0]
    assert "0.3000 ± 0.1414" in text
    assert text.count("LGCD (paper)") == 1 and "0.4000" in text
    assert "Food HR@10" in text


def test_bar_chart_is_written_at_a_size_that_fits_the_ui(tmp_path):
    import struct

    path = plot_metrics(_metrics(), tmp_path / "m.png", "valid", SUMMARY["domains"], 99)
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert width <= 1200 and height <= 800
