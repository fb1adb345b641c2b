"""`EmbeddedRelay`: a relay inside this process on 127.0.0.1, for solo use and tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from deeproom.net.server import RelayServer, RelaySettings


class EmbeddedRelay:
    """`async with EmbeddedRelay(data_dir=path) as relay: relay.url` — port 0 picks a free port."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        redis_url: str | None = None,
        **settings: Any,
    ) -> None:
        if data_dir is None:
            from deeproom.config import default_data_dir

            data_dir = default_data_dir()
        self.settings = RelaySettings(data_dir=Path(data_dir), host=host, port=port, redis_url=redis_url, **settings)
        self.server = RelayServer(self.settings)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> EmbeddedRelay:
        await self.server.start()
        return self

    async def close(self) -> None:
        await self.server.close()

    async def __aenter__(self) -> EmbeddedRelay:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
