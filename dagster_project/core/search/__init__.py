"""Retrieval: the hybrid (vector + full-text) search queries, the golden-set evaluation, and
changing the embedding model behind search without downtime."""
