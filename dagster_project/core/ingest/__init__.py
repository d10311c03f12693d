"""Ingestion: scanning a collection (manifest, corpus files), parsing them into blocks, chunking
within a token budget, content hashes, and the three exact, incremental ingestion steps."""
