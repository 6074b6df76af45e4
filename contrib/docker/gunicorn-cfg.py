"""rgunicorn settings for the container (the same file Gunicorn would read).

Everything a container platform tunes comes from the environment, so one image
runs unchanged under `docker run`, Compose and Kubernetes.
"""
import os

# Listen on every interface of the container; publish with `-p HOST:8000`.
bind = "0.0.0.0:" + os.environ.get("PORT", "8000")

# Worker processes. WEB_CONCURRENCY (as Gunicorn and Heroku use it) wins.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))

# A worker silent for this long (a request stuck in Python) is killed and
# replaced.
timeout = 30

# Seconds in-flight requests get to finish after SIGTERM. `docker stop` sends
# SIGTERM and SIGKILLs after 10 s unless told otherwise (`--time`, Compose's
# stop_grace_period, Kubernetes' terminationGracePeriodSeconds): keep this
# below that, or raise both together (the Kubernetes example sets 25 / 45).
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "8"))

# Logs: errors to stderr, one access-log line per request to stdout. Both are
# the container's log (`docker logs`, `kubectl logs`); nothing is buffered.
errorlog = "-"
accesslog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
