"""Deployment of the app to a Hugging Face Space (``python -m space_config deploy --help``)."""
