"""The metrics endpoint: Prometheus' exposition on `[metrics] listen`."""

from __future__ import annotations

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from node.http_edge import EdgeLimits, LoggingObserver, open_edge_listeners, serve_edge
from node.resources import Resources

# The metrics listener serves Prometheus scrapers only: few connections.
METRICS_LIMITS = EdgeLimits(connections_max=64)


class MetricsServer:
    name = "metrics"

    def __init__(self, res: Resources) -> None:
        self.res = res
        self.app = Starlette(routes=[Route("/metrics", self.metrics)])

    async def metrics(self, request: Request) -> Response:
        res = self.res
        res.metrics.mempool_txs.set(len(res.mempool))
        res.metrics.mempool_bytes.set(res.mempool.bytes)
        return Response(
            res.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # The API's contained server (node/http_edge.py): a hostile request on the
        # metrics port closes its connection only, never the node.
        listen = self.res.config.metrics.listen
        listeners = await open_edge_listeners(listen.host, listen.port, METRICS_LIMITS)
        task_status.started()
        await serve_edge(self.app, listeners, METRICS_LIMITS, LoggingObserver("metrics"))
