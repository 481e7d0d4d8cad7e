"""The torch thread count of the worker threads that run our jobs.

torch's CPU ops read their thread count from the calling thread's OpenMP setting, which torch
sets once per thread, from the session's count at that thread's first torch op. napari reuses
its worker threads from job to job, so a thread keeps whatever count it was left with:

- numba's OpenMP layer runs in the same OpenMP runtime (torch's libgomp, loaded first and
  globally), and the first parallel numba kernel of the process sets the count of the thread
  that runs it to ``NUMBA_NUM_THREADS``; :func:`start_numba_threads` does that one-time start
  on a thread of its own that then ends;
- a later ``torch.set_num_threads`` on another thread (the console, a test) does not reach a
  thread torch has already set up; :func:`match_torch_threads` at the start of every job gives
  the worker the session's count again.
"""

from __future__ import annotations

import sys
import threading

_lock = threading.Lock()
_started = False


def start_numba_threads() -> None:
    """Start numba's threading layer (once per process) on a short-lived thread of its own.

    Call it before a thread that also runs torch runs a numba ``parallel=True`` kernel (e.g.
    napari's label colours): the start sets the OpenMP thread count of the thread it runs on,
    which torch then uses in that thread. Without numba installed it does nothing.
    """
    global _started
    with _lock:
        if _started:
            return
        try:
            import numba
        except ImportError:
            _started = True
            return
        starter = threading.Thread(target=numba.get_num_threads, name="numba-threads-start")
        starter.start()
        starter.join()
        _started = True


def match_torch_threads() -> None:
    """Give the calling thread the session's torch thread count, the one a new thread gets.

    Call it at the start of a job in a reused worker thread. Does nothing before torch is
    imported (the thread then sets itself up from the session's count at its first op).
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    session: list[int] = []
    probe = threading.Thread(target=lambda: session.append(torch.get_num_threads()))
    probe.start()
    probe.join()
    if session and torch.get_num_threads() != session[0]:
        torch.set_num_threads(session[0])
