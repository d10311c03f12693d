"""Set when a job command got SIGINT or SIGTERM (cli/common.py `_execute_watched`): its run is
canceled and the process exits. Work that pays per request checks it and sends nothing new: the
refine step's worker threads are not daemons, so without it a stopping process would send every
remaining document's request before it could exit. What is in flight finishes; answers stored
before the exit are kept, the others are journaled and logged as lost by the next refine."""

from __future__ import annotations

import threading

STOPPING = threading.Event()
