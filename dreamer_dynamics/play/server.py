"""The HTTP side of ``dreamer-dynamics play``: the page (package data) and a small JSON API, standard library.

    GET  /              the page (play.html)
    GET  /api/info      model, actions, K choices, frame size
    POST /api/context   {"session", "mode": "play"|"replay", "k"} -> a new context (and session id)
    POST /api/step      {"session", "action": {"discrete", "continuous"}, "k"} -> the next frame
    POST /api/gif       {"frames": [base64 RGB], "fps"} -> image/gif of frames the page recorded

Frames travel as base64 of their uint8 bytes (H, W, C row-major); the page scales them up itself.
"""

from __future__ import annotations

import io
import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import numpy as np

from .session import Sessions
from .world import World

MAX_BODY = 64 << 20  # bytes of one request (a GIF's frames)
MAX_GIF_FRAMES = 3000


def page_html() -> bytes:
    return resources.files("dreamer_dynamics.play").joinpath("play.html").read_bytes()


def gif_bytes(frames: list[str], height: int, width: int, channels: int, fps: float) -> bytes:
    """An animated GIF (Pillow) of base64 uint8 frames [H, W, C], at `fps`, looping."""
    import base64

    from PIL import Image

    if not frames or len(frames) > MAX_GIF_FRAMES:
        raise ValueError(f"a GIF needs 1 to {MAX_GIF_FRAMES} frames, got {len(frames)}")
    images = []
    for text in frames:
        pixels = np.frombuffer(base64.b64decode(text), dtype=np.uint8).reshape(height, -1, channels)
        pixels = pixels[..., 0] if channels == 1 else pixels
        images.append(Image.fromarray(np.ascontiguousarray(pixels)))
    out = io.BytesIO()
    duration = max(20, int(round(1000.0 / max(fps, 1.0))))
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return out.getvalue()


class PlayHandler(BaseHTTPRequestHandler):
    """Routes the page and the API; the server object carries ``world`` and ``sessions``."""

    server: PlayServer
    protocol_version = "HTTP/1.1"  # keep-alive: one connection serves the page's whole game loop
    disable_nagle_algorithm = True  # TCP_NODELAY: a small reply must not wait for the delayed ACK (~40 ms)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per frame would flood
        pass

    def reply(self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, data: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.reply(json.dumps(data).encode(), "application/json", status)

    def do_GET(self) -> None:
        if self.path in ("/", "/index.html"):
            self.reply(page_html(), "text/html; charset=utf-8")
        elif self.path == "/api/info":
            self.reply_json(self.server.info())
        else:
            self.reply_json({"error": f"no such page {self.path}"}, HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.reply_json({"error": "request too large"}, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            self.close_connection = True
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/api/gif":
                data = gif_bytes(
                    body["frames"],
                    int(body["height"]),
                    int(body["width"]),
                    int(body["channels"]),
                    float(body.get("fps", 10)),
                )
                self.reply(data, "image/gif")
                return
            route = {"/api/context": self.server.new_context, "/api/step": self.server.step}.get(self.path)
            if route is None:
                self.reply_json({"error": f"no such endpoint {self.path}"}, HTTPStatus.NOT_FOUND)
                return
            self.reply_json(route(body))
        except (ValueError, KeyError, TypeError) as err:
            self.reply_json({"error": str(err)}, HTTPStatus.BAD_REQUEST)


class PlayServer(ThreadingHTTPServer):
    """A threading HTTP server holding the world (shared, read-only) and the pages' sessions."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A page that closes mid-reply is normal; anything else is printed as usual."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)

    def __init__(
        self,
        address: tuple[str, int],
        world: World,
        session_timeout: float = 600.0,
        seed: int | None = None,
    ) -> None:
        self.world = world
        self.sessions = Sessions(world, timeout=session_timeout, seed=seed)
        super().__init__(address, PlayHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def info(self) -> dict[str, Any]:
        world = self.world
        sample = world.decode(world.dataset.window(0, 0, 1)["latents"])  # (1, H, W, C)
        return {
            "source": world.source,
            "actions": world.action_spec(),
            "k_choices": world.step_choices(),
            "k": world.num_steps,
            "frame_shape": list(sample.shape[1:]),
            "context_frames": world.context_frames,
            "context_length": world.model.config.context_length,
        }

    def _k(self, body: dict[str, Any]) -> int:
        k = int(body.get("k") or self.world.num_steps)
        if k not in self.world.step_choices():
            raise ValueError(f"k={k} is not one of {self.world.step_choices()}")
        return k

    def new_context(self, body: dict[str, Any]) -> dict[str, Any]:
        session_id, session = self.sessions.get(body.get("session"))
        with session.lock:
            out = session.new_context(body.get("mode") == "replay", self._k(body))
        return {"session": session_id, **out}

    def step(self, body: dict[str, Any]) -> dict[str, Any]:
        session_id, session = self.sessions.get(body.get("session"))
        with session.lock:  # one model step at a time per page
            if session.stepper is None:
                session.new_context(body.get("mode") == "replay", self._k(body))
            out = session.step(body.get("action") or {}, self._k(body))
        return {"session": session_id, **out}


def serve(
    world: World,
    host: str = "127.0.0.1",
    port: int = 0,
    session_timeout: float = 600.0,
    seed: int | None = None,
) -> PlayServer:
    """Bind the server (OSError if the port is taken) and serve it from a background thread."""
    server = PlayServer((host, port), world, session_timeout, seed)
    threading.Thread(target=server.serve_forever, name="play-server", daemon=True).start()
    return server
