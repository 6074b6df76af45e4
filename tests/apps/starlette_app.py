"""A plain Starlette app for tests/test_asgi.py."""

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


async def home(request):
    return PlainTextResponse("Hello from Starlette")


async def user(request):
    return JSONResponse({"user": request.path_params["name"], "client": request.client.host,
                         "scheme": request.url.scheme})


async def echo(request):
    body = await request.body()
    return PlainTextResponse(body[::-1])


app = Starlette(routes=[Route("/", home), Route("/users/{name}", user),
                        Route("/echo", echo, methods=["POST"])])
