"""A training process dies with the process that started it (Linux ``PR_SET_PDEATHSIG``), so a killed step leaves no
worker behind to keep training and writing checkpoints that a re-run resumes from.

``python -m llm_assets.launch.parent_death COMMAND...`` arms the signal and execs COMMAND (the signal survives the
exec): the launcher starts every local worker through it, torchrun included, and each worker arms it again for
itself, so torchrun's children die with torchrun. Elsewhere than Linux it only execs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent exits; exits at once if the parent already has."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the signal was armed: nobody would send it now
        os.kill(os.getpid(), sig)


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m llm_assets.launch.parent_death COMMAND [ARG...]")
    die_with_parent()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
