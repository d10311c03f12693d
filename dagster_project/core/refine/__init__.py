"""Refinement: the LLM chain and its prices, prompts, pricing redaction, the quality analyzer and
routing, the extractive fallback, the refined JSON schema, and the refine step itself."""
