"""A started server that ends with the process that started it.

Test helpers start servers (the supplier simulator, ``topup serve``) in sessions of their
own, so that a test can kill -9 a server's whole group. The flip side: a test run killed
outright (``kill -9``, a CI timeout) would leave them running, holding their ports. A
server started with ``exit_with_parent`` asks the kernel to kill it when its parent ends.
Only the standard library here: it runs first thing in the started process.
"""

from __future__ import annotations

import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_parent(parent: int) -> None:
    """SIGKILL this process when ``parent`` ends (Linux; elsewhere nothing).

    The kernel watches the thread that started this process: start it from a thread
    that outlives it, as a test's own thread does.
    """
    if sys.platform != "linux":
        return
    import ctypes

    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        # The parent was gone before the request: no signal will come.
        os._exit(1)


def command(main: str) -> str:
    """``python -c`` code that runs ``main`` (a statement) after ``exit_with_parent``; the
    started process takes the parent's pid as its first argument."""
    return (
        "import sys\n"
        "from topup._lifeline import exit_with_parent\n"
        "exit_with_parent(int(sys.argv.pop(1)))\n"
        f"{main}\n"
    )
