"""The `refinery` command: one module per command group (ingest, search, refine, feedback,
snapshot, model, db, dev), the shared helpers in `common`, the parser and entry point in `main`."""

from .main import main

__all__ = ["main"]
