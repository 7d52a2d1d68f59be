"""How engine errors reach the page and the API."""
from __future__ import annotations

import functools
import inspect

import gradio as gr

from settings import PlatformError


def user_errors(fn):
    """Turn PlatformError into gr.Error, so the user sees the message and never a traceback (generator
    handlers, which stream updates, included)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def streaming(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except PlatformError as exc:
                raise gr.Error(str(exc)) from None
        return streaming

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PlatformError as exc:
            raise gr.Error(str(exc)) from None
    return wrapper
