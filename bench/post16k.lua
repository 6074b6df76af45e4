-- wrk script: POST a 16 KiB body (echoed back by bench/apps/hello.py)
wrk.method = "POST"
wrk.body = string.rep("x", 16384)
wrk.headers["Content-Type"] = "application/octet-stream"
