"""A worker that dies during boot with exit code 3 (as a worker whose
set-up failed outside the app import): the server must exit 3, not loop."""
import os

os._exit(3)
