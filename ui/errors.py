"""How engine errors reach the page and the API."""
from __future__ import annotations

import functools

import gradio as gr

from settings import PlatformError


def user_errors(fn):
    """Turn PlatformError into gr.Error, so the user sees the message and never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PlatformError as exc:
            raise gr.Error(str(exc)) from None
    return wrapper
