"""Data on disk: which files a folder holds and which are text (`files`), corpora read into
deduplicated documents (`corpus`), the token-shard format training reads (`shards`), and the text
read in pictures by OCR (`ocr`, for retrieval and the server).

Used by training, evaluation and retrieval alike; it knows nothing about language models.
"""
