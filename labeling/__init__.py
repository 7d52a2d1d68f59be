"""Human labels: the MongoDB store (``store``), label-name rules (``labels``), statistics and export.

Start with :func:`labeling.store.open_store`; nothing here imports Gradio.
"""
