"""Data: corpus files and their documents (sources.py, documents.py, catalog.py for TFDS), prepared once into
token shards (prepare.py), read back as rows (shards.py) and resumable, per-process batches and mixtures
(batches.py); corpus.py ties a config's data to all of these. tinyshakespeare.txt is the bundled corpus."""
