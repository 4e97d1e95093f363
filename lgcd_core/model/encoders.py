"""Per-domain sequence encoders of LGCD (paper eq. 1-3).

One :class:`DomainEncoder` per domain, over that domain's items only (local ids ``1..n``, 0 is
padding; :class:`lgcd_core.model.batches.ItemIndex` maps global ``item_idx`` <-> local ids):

- ``Encoder_ID``  : item-id embeddings -> :class:`SequenceTransformer`            (eq. 1, h^ID)
- ``Encoder_text``: frozen item text vectors -> Linear(dim_text, d) -> Transformer (eq. 1, h^text)
- fusion          : ``W_fusion [h^ID ; h^text] + b``                               (eq. 2)
- item side       : ``E_fusion = W_fusion [E_ID ; E_text] + b``                    (eq. 3)

A domain without item text (``EncoderSpec.has_text`` False) has no text pathway: the fusion reads the ID
half alone (``W_fusion h^ID + b``, and ``E_fusion = W_fusion E_ID + b``), and wherever LGCD reads the text
encoder (x0 of eq. 7) it reads the ID encoder (:meth:`DomainEncoder.encode_text` says so).

The frozen text vectors are a non-persistent buffer: checkpoints hold only trained weights, and the
vectors come from the ``item_text_embeddings`` stage when a checkpoint is loaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lgcd_core.model.sasrec import SequenceTransformer, last_real
from lgcd_core.stages import PRETRAINED_ENCODERS


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild a :class:`DomainEncoder` (stored as ``encoder_<D>.json``)."""

    domain: str
    n_items: int  # items of this domain (local ids 1..n_items)
    dim_text: int
    d: int = 64
    n_layers: int = 2
    n_heads: int = 1
    max_len: int = 50
    dropout: float = 0.2
    positions: str = "start"  # where position ids count from (sasrec.SequenceTransformer): 'start' is prefix-exact
    has_text: bool = True  # False: a domain without item text; the ID encoder stands in for the text encoder

    def to_json(self) -> dict:
        return asdict(self)


class DomainEncoder(nn.Module):
    """ID + text sequence encoders of one domain and their fusion (eq. 1-3)."""

    def __init__(self, spec: EncoderSpec, text_vectors: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        self.spec = spec
        d = spec.d
        text = torch.as_tensor(np.asarray(text_vectors, dtype=np.float32))
        if text.shape != (spec.n_items + 1, spec.dim_text):
            raise ValueError(f"text vectors of domain {spec.domain} have shape {tuple(text.shape)}, "
                             f"expected {(spec.n_items + 1, spec.dim_text)} (row 0 = padding)")
        self.register_buffer("text_vectors", text, persistent=False)  # (n+1, dim_text), frozen
        self.id_emb = nn.Embedding(spec.n_items + 1, d, padding_idx=0)  # E_ID
        nn.init.normal_(self.id_emb.weight, std=d ** -0.5)
        with torch.no_grad():
            self.id_emb.weight[0].zero_()
        args = (d, spec.n_layers, spec.n_heads, spec.max_len, spec.dropout, spec.positions)
        self.id_encoder = SequenceTransformer(*args)
        if spec.has_text:
            self.text_proj = nn.Linear(spec.dim_text, d)  # projects frozen text vectors to d (E_text)
            self.text_encoder = SequenceTransformer(*args)
        self.fusion = nn.Linear(2 * d if spec.has_text else d, d)  # W_fusion, b_fusion (eq. 2, 3)

    # ---- item side ---------------------------------------------------------------------------

    def item_id(self, items: torch.Tensor) -> torch.Tensor:
        """E_ID rows of local item ids (any shape) -> (..., d)."""
        return self.id_emb(items)

    def item_text(self, items: torch.Tensor) -> torch.Tensor:
        """E_text rows: projected frozen text vectors of local item ids -> (..., d)."""
        return self.text_proj(self.text_vectors[items])

    def item_fusion(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """E_fusion = W_fusion [E_ID ; E_text] + b (eq. 3) of local ids ``items`` (any shape) -> (..., d).

        None: every local item, padding included: (n_items+1, d).
        """
        if items is None:
            items = torch.arange(self.spec.n_items + 1, device=self.id_emb.weight.device)
        if not self.spec.has_text:
            return self.fusion(self.item_id(items))
        return self.fusion(torch.cat([self.item_id(items), self.item_text(items)], dim=-1))

    # ---- sequence side -----------------------------------------------------------------------

    def encode_id(self, items: torch.Tensor) -> torch.Tensor:
        """h^ID at every position (eq. 1): (B, L) left-padded local ids -> (B, L, d)."""
        return self.id_encoder(self.item_id(items), items == 0)

    def encode_text(self, items: torch.Tensor) -> torch.Tensor:
        """h^text at every position (eq. 1): (B, L) -> (B, L, d); h^ID for a domain without text."""
        if not self.spec.has_text:
            return self.encode_id(items)
        return self.text_encoder(self.item_text(items), items == 0)

    def fuse(self, h_id: torch.Tensor, h_text: torch.Tensor) -> torch.Tensor:
        """h^fusion = W_fusion [h^ID ; h^text] + b (eq. 2); W_fusion h^ID + b for a domain without text."""
        if not self.spec.has_text:
            return self.fusion(h_id)
        return self.fusion(torch.cat([h_id, h_text], dim=-1))

    def fuse_id_only(self, h_id: torch.Tensor) -> torch.Tensor:
        """The fusion with the text half zeroed: W_fusion [h^ID ; 0] + b (pseudo-user condition)."""
        d = self.spec.d
        return h_id @ self.fusion.weight[:, :d].T + self.fusion.bias

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Fused hidden states at every position: (B, L) -> (B, L, d)."""
        h_id = self.encode_id(items)
        return self.fuse(h_id, self.encode_text(items) if self.spec.has_text else h_id)

    def user_vector(self, items: torch.Tensor) -> torch.Tensor:
        """Fused representation read at the last real position: (B, L) -> (B, d)."""
        return last_real(self(items), items == 0)

    def scores(self, items: torch.Tensor) -> torch.Tensor:
        """Next-item scores over the local vocabulary (eq. 3): (B, L) -> (B, n_items+1), col 0 = -inf."""
        logits = self.user_vector(items) @ self.item_fusion().T
        logits[:, 0] = float("-inf")
        return logits


def save_encoder(encoder: DomainEncoder, directory: Path, extra: dict | None = None) -> None:
    """Write ``encoder_<D>.safetensors`` and ``encoder_<D>.json`` atomically."""
    from safetensors.torch import save_file

    from lgcd_core.io import atomic_path, write_json

    dom = encoder.spec.domain
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    with atomic_path(directory / PRETRAINED_ENCODERS.weights.format(domain=dom)) as tmp:
        save_file(state, str(tmp))
    write_json({"spec": encoder.spec.to_json(), **(extra or {})}, directory / PRETRAINED_ENCODERS.meta.format(domain=dom))


def load_encoder(directory: Path, domain: str, text_vectors: np.ndarray, device: str = "cpu") -> DomainEncoder:
    """Rebuild a pretrained encoder; ``text_vectors`` are that domain's local rows (row 0 zeros)."""
    from safetensors.torch import load_file

    meta = json.loads((directory / PRETRAINED_ENCODERS.meta.format(domain=domain)).read_text())
    encoder = DomainEncoder(EncoderSpec(**meta["spec"]), text_vectors)
    encoder.load_state_dict(load_file(str(directory / PRETRAINED_ENCODERS.weights.format(domain=domain))))
    return encoder.to(device).eval()
