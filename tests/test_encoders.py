import numpy as np
import pyarrow as pa
import pytest
import torch

from lgcd_core.model.batches import ItemIndex, pad_left, pretrain_rows
from lgcd_core.model.encoders import DomainEncoder, EncoderSpec, load_encoder, save_encoder


def _encoder(n=12, dim_text=5, d=8):
    torch.manual_seed(0)
    text = np.random.default_rng(0).normal(size=(n + 1, dim_text)).astype(np.float32)
    text[0] = 0
    return DomainEncoder(EncoderSpec("A", n, dim_text, d=d, n_layers=1, n_heads=2, max_len=6, dropout=0.0), text).eval()


def test_fusion_eq2_and_item_side_eq3():
    enc = _encoder()
    items = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    h_id, h_text = enc.encode_id(items), enc.encode_text(items)
    w, b = enc.fusion.weight, enc.fusion.bias
    manual = torch.cat([h_id, h_text], -1) @ w.T + b
    assert torch.allclose(enc(items), manual, atol=1e-6)
    all_items = torch.arange(13)
    e = torch.cat([enc.id_emb(all_items), enc.text_proj(enc.text_vectors[all_items])], -1) @ w.T + b
    assert torch.allclose(enc.item_fusion(), e, atol=1e-6)
    assert torch.allclose(enc.fuse_id_only(h_id), enc.fuse(h_id, torch.zeros_like(h_text)), atol=1e-6)


def test_text_vectors_are_frozen_and_not_saved(tmp_path):
    enc = _encoder()
    assert "text_vectors" not in enc.state_dict()
    assert all(p is not enc.text_vectors for p in enc.parameters())
    enc.train()
    enc.scores(torch.tensor([[1, 2, 3]]))[:, 1:].sum().backward()
    assert enc.text_proj.weight.grad is not None and enc.text_proj.weight.grad.abs().sum() > 0
    save_encoder(enc.eval(), tmp_path)
    again = load_encoder(tmp_path, "A", enc.text_vectors.numpy())
    x = torch.tensor([[0, 4, 2, 7]])
    assert torch.allclose(again.scores(x), enc.scores(x))


def test_padding_amount_does_not_change_outputs():
    """Right-aligned positions: padding to the batch's own length == padding to max_len."""
    enc = _encoder()
    short = pad_left([[3, 4, 5]], 3)
    full = pad_left([[3, 4, 5]], 6)
    assert torch.allclose(enc.user_vector(short), enc.user_vector(full), atol=1e-6)


def test_item_index_round_trip_and_pretrain_rows():
    items = pa.table({"item_idx": pa.array([1, 2, 3, 4, 5], pa.int32()), "domain": ["A", "A", "B", "B", "B"]})
    idx = ItemIndex.from_table(items)
    assert idx.n_domain("A") == 2 and idx.n_domain("B") == 3
    assert list(idx.global_of["B"]) == [0, 3, 4, 5]
    assert [list(x) for x in idx.to_local([[1, 3, 2, 5]], "B")] == [[1, 3]]
    x, y = pretrain_rows([np.array([1, 2, 3]), np.array([2])], max_len=4)
    assert x.tolist() == [[0, 0, 1, 2]] and y.tolist() == [[0, 0, 2, 3]]


def test_pretraining_sampled_softmax_against_a_hand_computed_case():
    from lgcd_core.model.pretrain import next_item_logits

    enc = _encoder()
    hidden = torch.randn(3, 8)
    targets = torch.tensor([2, 5, 12])
    full, labels = next_item_logits(enc, hidden, targets, None, torch.Generator().manual_seed(0))
    table = enc.item_fusion()
    assert torch.equal(labels, targets) and torch.isinf(full[:, 0]).all()
    assert torch.allclose(full[:, 1:], hidden @ table[1:].T, atol=1e-6)
    assert torch.allclose(enc.item_fusion(torch.tensor([[3, 4]])), table[[3, 4]][None], atol=1e-6)  # subset = rows
    logits, labels = next_item_logits(enc, hidden, targets, 4, torch.Generator().manual_seed(1))
    neg = torch.randint(1, 13, (4,), generator=torch.Generator().manual_seed(1))
    assert (labels == 0).all() and logits.shape == (3, 5)
    for row in range(3):
        assert logits[row, 0].item() == pytest.approx(torch.dot(hidden[row], table[targets[row]]).item(), abs=1e-5)
        for j, item in enumerate(neg.tolist()):
            expected = float("-inf") if item == targets[row] else torch.dot(hidden[row], table[item]).item()
            assert logits[row, 1 + j].item() == pytest.approx(expected, abs=1e-5)
