"""``tunelab serve``: artifacts behind one authenticated HTTP API with micro-batching and Prometheus metrics.

Example:
    >>> tunelab.serve({"sentiment": "runs/sst2"}, port=8000)     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .keys import KeyStore, new_key
from .settings import ServeSettings


def serve(models: dict[str, str | Path], **settings: Any) -> None:
    """Serve ``models`` (name -> artifact) until interrupted; ``settings`` are ``ServeSettings`` fields.

    Args:
        models: model name -> artifact (or run) directory.
        settings: ``host`` (default 127.0.0.1), ``port``, ``keys_file``, ``max_batch_size``, ``max_wait_ms``, ...

    Example:
        >>> serve({"sentiment": "runs/sst2"}, host="0.0.0.0", keys_file="keys.txt")     # doctest: +SKIP
    """
    import uvicorn

    from .app import create_app

    config = ServeSettings(models=models, **settings)
    app = create_app(config)

    uvicorn_config = uvicorn.Config(app, host=config.host, port=config.port, log_level="info",
                                    timeout_graceful_shutdown=30)
    draining_server(app, uvicorn_config).run()


def draining_server(app: Any, config: Any) -> Any:
    """A uvicorn server that, told to stop (SIGINT/SIGTERM), lets requests in flight finish while ``app``
    answers new ones (on connections already open) with 503."""
    import uvicorn

    class Draining(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.drain()
            super().handle_exit(sig, frame)

    return Draining(config)


__all__ = ["KeyStore", "ServeSettings", "draining_server", "new_key", "serve"]
