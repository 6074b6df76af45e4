"""rgunicorn: a drop-in, faster replacement for Gunicorn.

The server itself is the extension module ``rgunicorn._rgunicorn``, started by
the ``rgunicorn`` console script or ``python -m rgunicorn``. Importing this
package does not import it (importing it blocks the server's signals in the
importing thread).
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("rgunicorn")
except PackageNotFoundError:  # pragma: no cover - not installed
    __version__ = "unknown"
