"""Thread-level state shared by numba and torch, kept out of the threads that run our jobs.

numba's OpenMP threading layer runs in the OpenMP runtime torch loaded (torch's libgomp, loaded
first and globally), and the first parallel numba kernel of the process calls
``omp_set_num_threads(NUMBA_NUM_THREADS)`` on the thread that runs it. torch reads its thread
count per thread from that same setting, so a worker thread that ran the first kernel (napari's
label-colour kernels) silently ran every later torch job with numba's thread count.
:func:`start_numba_threads` does that one-time start on a thread of its own that then ends.
"""

from __future__ import annotations

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
