"""Backbone, image decoding, embeddings, prediction and the versioned model registry."""
