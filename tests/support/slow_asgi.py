"""A small ASGI app with handlers of known timing, to drive the API's HTTP protocol
(app/commands/http_limits.py) through pipelining, early answers and late reads in
tests/service/test_http_protocol.py. Query parameters, in seconds or bytes:

    /any?s=S        answer after S seconds (the body is not read)
    /read?s=S       read the whole body, then answer after S seconds
    /lateread?s=S   wait S seconds, then read the whole body and answer
    /big?n=N        answer N bytes at once
"""
from __future__ import annotations

import asyncio
from urllib.parse import parse_qs


async def _read_body(receive) -> int:
    n, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        n += len(message.get("body", b""))
        more = message.get("more_body", False)
    return n


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    seconds, path, read = float(query.get("s", 0)), scope["path"], 0
    if path == "/read":
        read = await _read_body(receive)
        await asyncio.sleep(seconds)
    elif path == "/lateread":
        await asyncio.sleep(seconds)
        read = await _read_body(receive)
    else:
        await asyncio.sleep(seconds)
    body = b"x" * int(query["n"]) if path == "/big" else f"{path} read {read}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
