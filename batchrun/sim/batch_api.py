"""The Files and Batches routes: behind the key, refused in the configured style, absent on request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from batchrun.sim.batches import BatchStore
from batchrun.sim.config import SimConfig
from batchrun.sim.faults import error_body
from batchrun.sim.files import FileStore, Refused

Handler = Callable[[web.Request], Awaitable[web.Response]]


def add_batch_api(
    app: web.Application,
    config: SimConfig,
    files: FileStore,
    batches: BatchStore,
    unauthorized: Callable[[web.Request], bytes | None],
) -> None:
    """Route /v1/files and /v1/batches to their stores."""
    routes: list[tuple[str, str, Handler]] = [
        ("POST", "/v1/files", files.upload),
        ("GET", "/v1/files/{file_id}", files.retrieve),
        ("GET", "/v1/files/{file_id}/content", files.content),
        ("POST", "/v1/batches", batches.create),
        ("GET", "/v1/batches", batches.list_batches),
        ("GET", "/v1/batches/{batch_id}", batches.retrieve),
        ("POST", "/v1/batches/{batch_id}/cancel", batches.cancel),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _guarded(handler, config, unauthorized))


def _guarded(
    handler: Handler, config: SimConfig, unauthorized: Callable[[web.Request], bytes | None]
) -> Handler:
    """The handler behind the key check, with its refusals as JSON errors."""
    style = config.error_style

    def error(status: int, message: str, param: str | None = None, code: str | None = None) -> web.Response:
        body = error_body(style, status, message, "invalid_request_error", param, code)
        return web.Response(status=status, body=body, content_type="application/json")

    async def guarded(request: web.Request) -> web.Response:
        if not config.batch_api:  # a provider without a Batch API knows no such URL
            return error(404, f"Invalid URL ({request.method} {request.path})")
        refusal = unauthorized(request)
        if refusal is not None:
            return web.Response(status=401, body=refusal, content_type="application/json")
        try:
            return await handler(request)
        except Refused as exc:
            return error(exc.status, exc.message, exc.param, exc.code)

    return guarded
