"""The sample app that contrib/docker/Dockerfile serves: a Flask app named
``app`` in ``run.py``, the layout the seed's users run with
``gunicorn --config gunicorn-cfg.py run:app``.

Replace it with your own: copy your project over /app in the Dockerfile and
keep the CMD.
"""
import os
import socket

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/")
def index():
    return "Hello from rgunicorn in a container!\n"


@app.get("/info")
def info():
    # Handy when checking a deployment: which worker answered, as which user.
    return jsonify(host=socket.gethostname(), pid=os.getpid(), uid=os.getuid())
