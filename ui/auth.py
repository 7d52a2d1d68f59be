"""Who is writing: anonymous visitors may predict; writes need a user when access control is on.

Three ways to be someone: the app's login form (per browser session), HTTP Basic credentials on an API
call (``gradio_client.Client(url, headers={"Authorization": "Basic …"})``), or — on a Space with
``HF_ALLOWED_USERS`` — "Sign in with Hugging Face".
"""
from __future__ import annotations

import base64
import binascii
import hmac

from settings import PlatformError, Settings


def check_password(settings: Settings, user: str, password: str) -> bool:
    expected = settings.app_users.get((user or "").strip())
    # compare_digest on both branches so a wrong user name takes as long as a wrong password
    return hmac.compare_digest((expected or "\0").encode(), (password or "").encode()) and expected is not None


def basic_user(settings: Settings, header: str | None) -> str | None:
    """The user named by a valid ``Authorization: Basic`` header, else None."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return user if check_password(settings, user, password) else None


def oauth_user(settings: Settings, profile) -> str | None:
    """A signed-in Hugging Face user allowed by ``HF_ALLOWED_USERS`` (names or organisations)."""
    if profile is None or not settings.oauth_allowed:
        return None
    name = getattr(profile, "username", None) or (profile.get("preferred_username") if isinstance(profile, dict) else None)
    orgs = {o.get("preferred_username") or o.get("name") for o in (getattr(profile, "get", lambda *_: [])("orgs") or [])
            if isinstance(o, dict)}
    allowed = set(settings.oauth_allowed)
    return name if name and (name in allowed or orgs & allowed) else None


def writer(settings: Settings, session_user: str | None, request=None, profile=None) -> str:
    """The name to record for a write, or PlatformError when access control refuses it."""
    if not settings.auth_required:
        return session_user or "anonymous"
    if session_user and session_user in settings.app_users:
        return session_user
    headers = getattr(request, "headers", None) or {}
    user = basic_user(settings, headers.get("authorization")) or oauth_user(settings, profile)
    if user:
        return user
    raise PlatformError("Log in to do this: saving labels, training and activating versions need a signed-in user")
