"""Feedback: people's judgements of refined documents and search hits, their rules, listings and
summaries, and what the refiner reads back."""
