"""Backbone, image decoding, embeddings, prediction and the versioned model registry."""
from classifier.memory import keep_freed_memory

# As early as possible: glibc's arena settings only reach threads that have not allocated yet, and
# every process that runs the backbone imports this package first. See classifier/memory.py.
keep_freed_memory()
