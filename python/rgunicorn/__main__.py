"""``rgunicorn`` (the console script) and ``python -m rgunicorn``."""

import os
import sys


def _reexec_prefix():
    """The command that starts this very server again (for SIGUSR2), without
    the server's own arguments: the interpreter with its options, then the
    script or ``-m rgunicorn``."""
    orig = getattr(sys, "orig_argv", None)  # Python 3.10+
    if orig and len(orig) >= len(sys.argv):
        # The arguments are the tail of the original command line.
        prefix = list(orig[: len(orig) - len(sys.argv) + 1])
        prefix[0] = sys.executable
        return prefix
    if os.path.basename(sys.argv[0]) == "__main__.py":
        return [sys.executable, "-m", "rgunicorn"]
    return [sys.executable, sys.argv[0]]


def main():
    """Run the server; exit with its exit code."""
    # Before anything else: importing the extension blocks the signals the
    # master reads from its signalfd, so every thread started from here on
    # (config file, hooks, a preloaded app) inherits the mask.
    from rgunicorn import _rgunicorn

    # A console script does not put the working directory on sys.path
    # (`python -m` does); Gunicorn's users import their app from there.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    sys.exit(_rgunicorn.main(list(sys.argv), _reexec_prefix()))


if __name__ == "__main__":
    main()
