"""`refinery serve`: the read-only HTTP search API for applications (core/search/api.py)."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from ..core.db.pg import _passwords
from .common import CliError, load_settings, prepare_databases


def cmd_serve(args) -> int:
    from ..core.db.store import VectorStore
    from ..core.search.api import ServeState, make_server

    if not 1 <= args.connections <= 64:
        raise CliError(f"--connections must be from 1 to 64, not {args.connections}")
    if not 0.1 <= args.db_wait <= 60:
        raise CliError(f"--db-wait must be from 0.1 to 60 seconds, not {args.db_wait:g}")
    settings = load_settings(args)
    urls = prepare_databases(settings)
    store = VectorStore(urls.vector_store, max_connections=args.connections, session_role="refinery_reader",
                        connection_wait=args.db_wait)
    state = ServeState(store, settings, secrets=_passwords(urls.vector_store), connection_wait=args.db_wait)
    try:
        state.current_searcher()  # load the embedder before the first request (it can take seconds)
    except Exception as exc:  # noqa: BLE001 - nothing embedded yet: serve anyway, /health says so
        print(f"refinery serve: not ready yet ({getattr(exc, 'message', exc)})", file=sys.stderr, flush=True)
    try:
        server = make_server(state, args.host, args.port)
    except OSError as exc:
        store.close()
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}; pick another --port") from None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    api_log = logging.getLogger("dagster_project.core.search.api")
    api_log.addHandler(handler)
    api_log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    api_log.propagate = False

    def stop(signum, _frame) -> None:  # serve_forever returns once shutdown() runs in another thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop)
    host, port = server.server_address[:2]
    print(f"refinery serve: listening on http://{host}:{port} (routes: GET /health, GET /health/live, "
          "GET|POST /v1/search, GET /v1/documents/{collection}/{path})", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        store.close()
    print("refinery serve: stopped", flush=True)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("serve", help="the read-only HTTP search API for applications (a token per tenant)")
    p.add_argument("--manifest")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port (printed at start)")
    p.add_argument("--connections", type=int, default=8, help="database connections (concurrent searches)")
    p.add_argument("--db-wait", type=float, default=2.0, metavar="SECONDS",
                   help="how long a request waits for a database connection before a 503 (default 2)")
    p.add_argument("--quiet", action="store_true", help="no line per request (errors only)")
    p.set_defaults(func=cmd_serve)
