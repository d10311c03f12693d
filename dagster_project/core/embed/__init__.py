"""Embedding providers behind one protocol: the shared types (base), the offline embedders
(local), the OpenAI-compatible client, and the factory that builds the configured one."""
