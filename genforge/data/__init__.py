"""Data on disk: which files a folder holds and which are text (`files`), corpora read into
deduplicated documents (`corpus`), and the token-shard format training reads (`shards`).

Used by training, evaluation and retrieval alike; it knows nothing about models.
"""
