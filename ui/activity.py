"""An ASGI middleware that tells the engine while the server receives an upload.

Gradio receives a batch's files on its upload route before the prediction starts; ``gradio_client`` sends each
file as its own request. Meanwhile the upload recorder (the previous batch's journaled writes) and training steps
would share the cores with Python parsing the upload. Wrapping those routes in ``engine.receiving()`` lets them
wait (:mod:`classifier.priority`), so the request a person waits for goes first.
"""
from __future__ import annotations


class UploadActivity:
    """``Middleware(UploadActivity, engine=engine)``: marks requests to paths ending in ``/upload``."""

    def __init__(self, app, engine):
        self.app, self.engine = app, engine

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or not scope.get("path", "").endswith("/upload"):
            return await self.app(scope, receive, send)
        with self.engine.receiving():
            return await self.app(scope, receive, send)
