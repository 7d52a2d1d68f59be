"""Presentation helpers for app.py: access control, tables/galleries, plots. No engine logic here."""
