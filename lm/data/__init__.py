"""Data: corpora as prepared TFDS datasets of documents (sources.py) and packed, resumable, per-process batches
(batches.py); tinyshakespeare.txt is the bundled corpus."""
