"""Every call to the Hugging Face Hub, in one package that the engine owns: model versions and the shared
active version (:mod:`hub.models`, :mod:`hub.publish`), the label journal (:mod:`hub.journal`), dataset
loading, exports and revisions (:mod:`hub.datasets`), and Space deployment (:mod:`hub.space`).

Nothing else imports ``huggingface_hub``; each failure becomes a :class:`settings.PlatformError` whose
message never holds the token.
"""
