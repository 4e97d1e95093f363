"""Encoders read a prefix as that prefix (issue 23 point 1): with positions counted from the start of the
window, the output at slot k of a row equals the output on the prefix ending at k, read alone.

Checked for the ID and text encoders, their fusion, LGCD's condition and x0, and our SASRec baselines;
the public-recipe ``end`` convention is checked to differ, so the test can fail.
"""

import numpy as np
import pytest
import torch

from lgcd_core.config import BaselineSASRecConfig, LGCDConfig, PublicSASRecConfig
from lgcd_core.model.batches import pad_left
from lgcd_core.model.encoders import DomainEncoder, EncoderSpec
from lgcd_core.model.sasrec import SequenceTransformer
from lgcd_core.model.sasrec_baseline import SASRec

MAX_LEN = 8
ROW = [3, 7, 1, 9, 4, 4, 2]  # 7 items: every prefix fits in max_len


def _encoder(positions: str) -> DomainEncoder:
    torch.manual_seed(0)
    text = np.random.default_rng(0).normal(size=(11, 5)).astype(np.float32)
    text[0] = 0
    spec = EncoderSpec("A", 10, 5, d=8, n_layers=2, n_heads=2, max_len=MAX_LEN, dropout=0.0, positions=positions)
    return DomainEncoder(spec, text).eval()


def _slots_vs_prefixes(encode, positions_width: int = MAX_LEN) -> float:
    """Largest |output at slot k of the whole row − last output of the prefix ending at k|, over k."""
    whole = encode(pad_left([ROW], positions_width))[0, -len(ROW):]  # (len, d) at the real slots
    worst = 0.0
    for k in range(1, len(ROW) + 1):
        alone = encode(pad_left([ROW[:k]], positions_width))[0, -1]
        worst = max(worst, float((whole[k - 1] - alone).abs().max()))
    return worst


@pytest.mark.parametrize("part", ["id", "text", "fused"])
def test_domain_encoder_is_prefix_exact(part):
    enc = _encoder("start")
    encode = {"id": enc.encode_id, "text": enc.encode_text, "fused": enc}[part]
    with torch.no_grad():
        assert _slots_vs_prefixes(encode) < 1e-5
        assert _slots_vs_prefixes(encode, positions_width=len(ROW)) < 1e-5  # a batch padded to its own width


def test_end_aligned_positions_are_not_prefix_exact():
    with torch.no_grad():
        assert _slots_vs_prefixes(_encoder("end").encode_text) > 1e-2


@pytest.mark.parametrize("cfg, exact", [(BaselineSASRecConfig(d=8, n_layers=2, n_heads=2, max_len=MAX_LEN, dropout=0.0), True),
                                        (PublicSASRecConfig(d=8, n_layers=2, n_heads=2, max_len=MAX_LEN, dropout=0.0), False)])
def test_sasrec_baselines_prefix_exact_and_the_public_recipe_keeps_its_convention(cfg, exact):
    torch.manual_seed(0)
    model = SASRec(torch.ones(11), torch.arange(1, 11), cfg).eval()
    with torch.no_grad():
        gap = _slots_vs_prefixes(model.hidden)
    assert (gap < 1e-5) == exact


def test_transformer_positions_count_from_the_first_real_item():
    t = SequenceTransformer(8, 1, 1, 6, 0.0, "start")
    pad = torch.tensor([[True, True, False, False, False], [False, False, False, False, False]])
    assert t.position_ids(pad).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    with pytest.raises(ValueError, match="positions"):
        SequenceTransformer(8, 1, 1, 6, 0.0, "middle")


def test_lgcd_training_reads_x0_and_the_condition_as_inference_does():
    """x0 of every training slot and h_cond of every training target equal what inference computes on the prefix."""
    from lgcd_core.model.batches import NEVER
    from lgcd_core.model.lgcd import LGCDModel

    encs = {"A": _encoder("start"), "B": _encoder("start")}
    for preceding in (True, False):
        cfg = LGCDConfig().with_updates({"interpretation.x0": "preceding" if preceding else "including",
                                         "architecture.max_len": MAX_LEN})
        model = LGCDModel(cfg, encs).eval()
        tgt = pad_left([ROW], MAX_LEN)
        with torch.no_grad():
            x0, has = model.target_features("B", tgt)
            for k in range(1, len(ROW) + 1):  # the target at (1-based) position k of ROW
                history = pad_left([ROW[:k - 1]], MAX_LEN)
                one, one_has = model.x0_after("B", history, torch.tensor([ROW[k - 1]]))
                slot = MAX_LEN - len(ROW) + k - 1
                assert bool(has[0, slot]) == bool(one_has[0])
                if one_has[0]:
                    assert torch.allclose(x0[0, slot], one[0], atol=1e-5)
            assert bool(has[0, MAX_LEN - len(ROW)]) is (not preceding)  # the first target: x0 only when including
        # the condition: a training query after source slot j reads the condition inference gets from ROW[:j+1]
        src = pad_left([ROW], MAX_LEN)
        src_pos = torch.where(src != 0, torch.arange(MAX_LEN) * 2, NEVER)
        query_pos = (torch.arange(len(ROW)) * 2 + 1)[None]
        with torch.no_grad():
            sel = model._select("AB", src, src_pos, query_pos, torch.ones_like(query_pos, dtype=torch.bool),
                                torch.zeros(1, dtype=torch.bool))
            for n, q in enumerate(sel.query.tolist()):
                prefix = [i for i, p in zip(src[0].tolist(), src_pos[0].tolist()) if i and p < query_pos[0, q]]
                inf = model.infer("AB", pad_left([prefix], MAX_LEN))
                assert torch.allclose(sel.h_cond[n], inf.h_cond[0], atol=1e-5)
