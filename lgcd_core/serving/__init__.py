"""Serving: top-K target-domain items for users, from a trained LGCD model.

- :mod:`topk`: the top-K search with exclusion, exact (a sort of every score) or through FAISS
  (inner-product candidates re-scored exactly); both give the same list.
- :mod:`recommender`: :class:`~lgcd_core.serving.recommender.Recommender`, user vectors times item
  vectors (LGCD's eq. 25 is exactly ``h_final · E_fusion``), built from a model's files.
- :mod:`recommend`: the ``recommendations`` stage: every single-domain and held-out user at once.
- :mod:`exported`: a folder a service loads without Dagster (``lgcd export``) and its loader.
"""
