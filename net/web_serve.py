"""The browser client's pages on the relay: `/`, `/r/{room}` and `/web/deeproom.js`.

The page (`net/web/index.html`) and its bundle (`net/web/dist/deeproom.js`, built by
`make` with npm and esbuild, shipped in the wheel as package data) are read once
and served from memory, so a relay installed with pip serves the page with no node
on that machine. An invite opens as `http://HOST:PORT/r/ROOM?invite=TOKEN`
(`page_link` turns a `deeproom://` link into that form). Nothing here touches
rooms: the page joins through the same Socket.IO protocol as every other client.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, urlsplit

from aiohttp import web

WEB_DIR = Path(__file__).resolve().parent / "web"
BUNDLE = WEB_DIR / "dist" / "deeproom.js"
INDEX = WEB_DIR / "index.html"
_ROOM = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def headers(sfu_url: str | None = None) -> dict[str, str]:
    """Response headers: the page loads only its own script and talks only to this relay
    (and to the relay's SFU, the one place its voice may go besides direct WebRTC links)."""
    connect = "'self' ws: wss:"
    if sfu_url:
        parts = urlsplit(sfu_url)
        if parts.scheme in ("http", "https") and parts.netloc:
            connect += f" {parts.scheme}://{parts.netloc}"
    return {
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",  # invite tokens ride in the query string
        "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                   "img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
                                   f"connect-src {connect}; frame-ancestors 'none'",
    }


class WebAssets:
    """The page and its bundle, loaded once; missing ones answer 503 with what to do."""

    def __init__(self, web_dir: Path = WEB_DIR, sfu_url: str | None = None) -> None:
        self.headers = headers(sfu_url)
        self.index = _read(web_dir / "index.html")
        self.bundle = _read(web_dir / "dist" / "deeproom.js")

    @property
    def available(self) -> bool:
        return self.index is not None and self.bundle is not None

    async def page(self, request: web.Request) -> web.Response:
        room = request.match_info.get("room")
        if room is not None and not _ROOM.fullmatch(room):
            return web.Response(status=404, text="a room name is 1-64 characters from A-Z a-z 0-9 _ . : -\n")
        if not self.available:
            return _missing()
        assert self.index is not None
        return web.Response(body=self.index, content_type="text/html", charset="utf-8",
                            headers={**self.headers, "Cache-Control": "no-cache"})

    async def script(self, request: web.Request) -> web.Response:
        if self.bundle is None:
            return _missing()
        return web.Response(body=self.bundle, content_type="application/javascript", charset="utf-8",
                            headers={**self.headers, "Cache-Control": "no-cache"})

    def register(self, app: web.Application) -> None:
        app.router.add_get("/", self.page)
        app.router.add_get("/r/{room}", self.page)
        app.router.add_get("/web/deeproom.js", self.script)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _missing() -> web.Response:
    return web.Response(
        status=503, content_type="text/plain",
        text="This relay has no browser client: its bundle (net/web/dist/deeproom.js) was not built.\n"
             "Run `make setup` (needs node and npm) in a source checkout, or install a DeepRoom wheel built that way.\n",
    )


def register_web(app: web.Application, sfu_url: str | None = None) -> WebAssets:
    """Add the page's routes to the relay's aiohttp application (`sfu_url`: the relay's SFU)."""
    assets = WebAssets(sfu_url=sfu_url)
    assets.register(app)
    return assets


def page_link(link: str) -> str:
    """`deeproom://HOST:PORT/ROOM?invite=T` → `http://HOST:PORT/r/ROOM?invite=T` (the page's form)."""
    parts = urlsplit(link.strip())
    if parts.scheme not in ("deeproom", "http", "https") or not parts.netloc:
        raise ValueError(f"not a DeepRoom link: {link[:80]!r}")
    room = parts.path.strip("/").removeprefix("r/")
    if not _ROOM.fullmatch(room):
        raise ValueError(f"not a room name in the link: {room[:80]!r}")
    scheme = "https" if parts.scheme == "https" else "http"
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{parts.netloc}/r/{quote(room, safe='.:-_')}{query}"
