"""An ASGI middleware around the app's upload routes: it tells the engine while an upload is being received,
and which files it saved.

Gradio receives a batch's files on its upload route before the prediction starts; ``gradio_client`` sends each
file as its own request. Meanwhile the upload recorder (the previous batch's journaled writes) and training steps
would share the cores with Python parsing the upload. Wrapping those routes in ``engine.receiving()`` lets them
wait (:mod:`classifier.priority`), so the request a person waits for goes first. Once a route has answered (and
Gradio has moved the files to where its answer says), the saved paths go to ``engine.received()``, which embeds
the images ahead of their prediction (:mod:`engine.prefetch`).
"""
from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)
MAX_ANSWER_BYTES = 1 << 20
"""An upload route's answer is a JSON list of saved paths; anything longer is not read for them."""


class UploadActivity:
    """``Middleware(UploadActivity, engine=engine)``: marks requests to paths ending in ``/upload``."""

    def __init__(self, app, engine):
        self.app, self.engine = app, engine

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or not scope.get("path", "").endswith("/upload"):
            return await self.app(scope, receive, send)
        answer = {"status": None, "body": bytearray()}

        async def watch(message):
            if message["type"] == "http.response.start":
                answer["status"] = message.get("status")
            elif message["type"] == "http.response.body" and len(answer["body"]) <= MAX_ANSWER_BYTES:
                answer["body"] += message.get("body", b"")
            await send(message)

        with self.engine.receiving():
            await self.app(scope, receive, watch)  # returns after Gradio's background move of the files
        if answer["status"] == 200 and len(answer["body"]) <= MAX_ANSWER_BYTES:
            try:
                paths = json.loads(bytes(answer["body"]))
            except ValueError:
                return
            if isinstance(paths, list):
                self.engine.received(paths)
