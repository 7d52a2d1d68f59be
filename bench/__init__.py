"""``python -m bench``: the platform's performance and accuracy benchmark (see ``bench/__main__.py``)."""
