"""A small Flask app for the integration tests: JSON, a form POST, query args."""

from flask import Flask, abort, jsonify, request

app = Flask(__name__)


@app.get("/api/items")
def items():
    return jsonify({"items": [{"id": 1, "name": "alpha"}, {"id": 2, "name": "béta"}], "count": 2})


@app.post("/api/echo")
def echo_json():
    data = request.get_json(silent=True)
    if data is None:
        abort(400)
    return jsonify({"received": data})


@app.post("/form")
def form():
    name = request.form.get("name", "")
    colours = request.form.getlist("colour")
    return "Hello, %s! colours=%s" % (name, ",".join(colours))


@app.get("/search")
def search():
    return jsonify({
        "q": request.args.get("q"),
        "page": request.args.get("page", 1, type=int),
        "tags": request.args.getlist("tag"),
    })


@app.post("/upload-size")
def upload_size():
    f = request.files.get("file")
    if f is None:
        abort(400)
    data = f.read()
    return jsonify({"filename": f.filename, "size": len(data)})
