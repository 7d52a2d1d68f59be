"""Who may write: APP_USERS logins, HTTP Basic on API calls, and Hugging Face sign-in on a Space."""
import base64
from types import SimpleNamespace

import pytest

from settings import PlatformError, load_settings
from ui import auth


def basic(user, password):
    return SimpleNamespace(headers={"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()})


def test_open_app_records_anonymous_or_session_name():
    settings = load_settings({})
    assert auth.writer(settings, None, SimpleNamespace(headers={})) == "anonymous"


def test_app_users_need_a_valid_login():
    settings = load_settings({"APP_USERS": "alice:s3cret, bob:pw"})
    assert auth.writer(settings, "alice", None) == "alice"
    assert auth.writer(settings, None, basic("bob", "pw")) == "bob"
    for session_user, request in ((None, None), ("mallory", None), (None, basic("alice", "wrong")),
                                  (None, SimpleNamespace(headers={"authorization": "Basic !!notbase64"}))):
        with pytest.raises(PlatformError, match="Log in"):
            auth.writer(settings, session_user, request)


def test_space_sign_in_limited_to_allowed_users_and_orgs():
    settings = load_settings({"SPACE_ID": "you/app", "HF_ALLOWED_USERS": "alice,lab-org"})
    assert settings.auth_required
    alice = {"preferred_username": "alice", "orgs": []}
    member = {"preferred_username": "carol", "orgs": [{"preferred_username": "lab-org"}]}
    stranger = {"preferred_username": "mallory", "orgs": [{"preferred_username": "other"}]}
    assert auth.writer(settings, None, None, alice) == "alice"
    assert auth.writer(settings, None, None, member) == "carol"
    with pytest.raises(PlatformError, match="Log in"):
        auth.writer(settings, None, None, stranger)
    with pytest.raises(PlatformError, match="Log in"):
        auth.writer(settings, None, None, None)


def test_bad_app_users_setting_is_a_clear_error():
    with pytest.raises(PlatformError, match="APP_USERS must look like"):
        load_settings({"APP_USERS": "alice"})
