"""Retrieval-augmented generation: ingest -> chunk -> embed -> store -> retrieve -> answer with citations.

Everything here is imported lazily by its user: `import genforge.rag` costs nothing.
"""
