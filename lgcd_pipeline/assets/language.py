"""Language stages: item text embeddings, LLM pseudo-texts, FAISS grounding, pseudo-overlap sequences."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from lgcd_core.config import DatasetConfig
from lgcd_core.stages import GROUNDED_ITEMS, ITEM_TEXT_EMBEDDINGS, PSEUDO_OVERLAP_SEQUENCES, PSEUDO_TEXTS, SEQUENCES
from lgcd_pipeline.metadata import stats_metadata, table_metadata
from lgcd_pipeline.stage import cache_dir, stage_asset


def _log(context):
    return lambda message: context.log.info(message)


def build(cfg: DatasetConfig) -> list[dg.AssetsDefinition]:
    @stage_asset(
        cfg, ITEM_TEXT_EMBEDDINGS, kinds={"pytorch", "numpy"}, gpu=True,
        description="One L2-normalised sentence-transformers vector per item, row = item_idx (eq. 1, 5). "
        "Vectors are cached per (model, text), so re-materializing with unchanged inputs encodes nothing.",
    )
    def item_text_embeddings(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.device import resolve_device
        from lgcd_core.io import atomic_dir, read_parquet, write_json, write_npy
        from lgcd_core.language.text_encoder import encode_items

        items = read_parquet(SEQUENCES.items.path(cfg))
        vectors, stats = encode_items(
            items, cfg.text_encoder, resolve_device(cfg.device), cache_dir(cfg, "text_vectors"), log=_log(context)
        )
        with atomic_dir(out_dir) as tmp:
            write_npy(vectors, tmp / ITEM_TEXT_EMBEDDINGS.vectors)
            write_json({"model": stats.get("model"), "dim": int(vectors.shape[1]), "n_items": int(vectors.shape[0] - 1)},
                       tmp / ITEM_TEXT_EMBEDDINGS.meta)
        return dg.MaterializeResult(
            metadata={"path": dg.MetadataValue.path(str(out_dir / ITEM_TEXT_EMBEDDINGS.vectors)), **stats_metadata(stats)}
        )

    @stage_asset(
        cfg, PSEUDO_TEXTS, kinds={"pytorch", "parquet"}, gpu=True,
        description="For each single-domain user, an LLM guesses items of the other domain from their history (eq. 4). "
        "Answers are cached by (model, template, prompt, generation settings): re-runs and resumed runs "
        "generate only what is missing. Empty when pseudo_overlap.source is an LLM-free source (text, collaborative).",
    )
    def pseudo_texts(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.device import resolve_device
        from lgcd_core.io import atomic_dir, read_parquet, write_parquet
        from lgcd_core.language.pseudo_text import generate_pseudo_texts

        items = read_parquet(SEQUENCES.items.path(cfg))
        sequences = read_parquet(SEQUENCES.sequences.path(cfg))
        table, stats = generate_pseudo_texts(
            cfg, items, sequences, cache_dir(cfg, "llm"), resolve_device(cfg.device), log=_log(context)
        )
        with atomic_dir(out_dir) as tmp:
            write_parquet(table, tmp / PSEUDO_TEXTS.table)
        return dg.MaterializeResult(metadata={**table_metadata(table, out_dir / PSEUDO_TEXTS.table), **stats_metadata(stats)})

    @stage_asset(
        cfg, GROUNDED_ITEMS, kinds={"faiss", "parquet"},
        description="n_K real target-domain items per pseudo user, from pseudo_overlap.source: llm (each description "
        "embedded with the text encoder and grounded by cosine, FAISS exact inner product; eq. 5-6), text (the "
        "user's own source items grounded the same way) or collaborative (co-purchase counts of overlap users; "
        "our extension). The `source` column labels every row.",
    )
    def grounded_items(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        import numpy as np

        from lgcd_core.device import resolve_device
        from lgcd_core.io import atomic_dir, read_parquet, write_parquet
        from lgcd_core.language.grounding import category_overlap_rate, ground_pseudo_users, taste_match_rate

        pseudo = read_parquet(PSEUDO_TEXTS.table.path(cfg))
        items = read_parquet(SEQUENCES.items.path(cfg))
        sequences = read_parquet(SEQUENCES.sequences.path(cfg))
        vectors = np.load(ITEM_TEXT_EMBEDDINGS.vectors.path(cfg))
        table, stats = ground_pseudo_users(
            pseudo, items, sequences, cfg, resolve_device(cfg.device), item_embeddings=vectors
        )
        # Does grounding carry signal? Co-purchase / shared-title-word rates against chance on any data,
        # and the latent-taste match rate against chance where the synthetic generator knows the truth.
        signal = {f"signal_{k}": v for k, v in category_overlap_rate(table, items, sequences).items()}
        if cfg.pseudo_overlap.source == "collaborative":
            signal["signal_note"] = "copurchase_rate is near 1 by construction for the collaborative source"
        if cfg.source.format == "synthetic":
            from lgcd_core.data.synthetic import load_truth

            truth = load_truth(cfg.source_dir())
            signal.update({f"signal_taste_{k}": v for k, v in taste_match_rate(table, items, sequences, truth).items()})
        context.log.info(f"grounding signal: {signal}")
        with atomic_dir(out_dir) as tmp:
            write_parquet(table, tmp / GROUNDED_ITEMS.table)
        return dg.MaterializeResult(
            metadata={**table_metadata(table, out_dir / GROUNDED_ITEMS.table), **stats_metadata({**stats, **signal})}
        )

    @stage_asset(
        cfg, PSEUDO_OVERLAP_SEQUENCES, kinds={"python", "parquet"},
        description="Source sequences of single-domain users with their grounded target items inserted at random, "
        "seeded positions (Ŝ_i^A); `is_pseudo` marks the inserted positions.",
    )
    def pseudo_overlap_sequences(context, cfg: DatasetConfig, out_dir: Path) -> dg.MaterializeResult:
        from lgcd_core.data.contracts import check_items
        from lgcd_core.io import atomic_dir, read_parquet, write_parquet
        from lgcd_core.language.pseudo_overlap import build_pseudo_overlap
        from lgcd_core.protocol.settings import item_domains

        sequences = read_parquet(SEQUENCES.sequences.path(cfg))
        grounded = read_parquet(GROUNDED_ITEMS.table.path(cfg))
        check_items(grounded, "items", item_domains(read_parquet(SEQUENCES.items.path(cfg))), GROUNDED_ITEMS.table.path(cfg),
                    domain_column="target_domain")
        table, stats = build_pseudo_overlap(sequences, grounded, cfg.pseudo_overlap)
        stats = {"source": cfg.pseudo_overlap.source, **stats}
        with atomic_dir(out_dir) as tmp:
            write_parquet(table, tmp / PSEUDO_OVERLAP_SEQUENCES.table)
        return dg.MaterializeResult(
            metadata={**table_metadata(table, out_dir / PSEUDO_OVERLAP_SEQUENCES.table), **stats_metadata(stats)}
        )

    return [item_text_embeddings, pseudo_texts, grounded_items, pseudo_overlap_sequences]
