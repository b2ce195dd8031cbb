"""An ASGI app under real uvicorn on a loopback port, for as long as a test needs it."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tests.cluster import free_port

START_WITHIN_SECONDS = 10.0
SERVE_WITHIN_SECONDS = 30.0


@asynccontextmanager
async def run_asgi(app: Any, *, log_level: str = "warning", **config: Any) -> AsyncIterator[str]:
    """``app`` served by uvicorn (``config`` as ``uvicorn.Config`` takes it), started, lifespan run: its
    base URL. Afterwards the server is stopped and its task awaited (an error it raised is raised)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, **config))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + START_WITHIN_SECONDS
    while not server.started:  # uvicorn offers no event to wait on
        if task.done():
            task.result()  # its start-up error, rather than a timeout
            raise AssertionError("uvicorn stopped before it started")
        assert time.monotonic() < deadline, f"uvicorn did not start within {START_WITHIN_SECONDS} s"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length, read off a raw socket."""
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


def serve_until_healthy(command: list[str], port: int, env: dict[str, str], log_path: Path) -> str:
    """Run ``command`` (a server on ``port``, its output into ``log_path``) until its /healthz answers
    200, then stop it: its output. Fails, showing that output, if it exits or is not healthy in time."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + SERVE_WITHIN_SECONDS
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
        finally:
            process.terminate()
            process.wait(timeout=15)
    return log_path.read_text()
