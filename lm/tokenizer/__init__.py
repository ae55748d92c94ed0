"""Tokenizers: SentencePiece models trained on a run's data (sentencepiece.py), Hugging Face tokenizers for
imported weights (huggingface.py), and reading either back from a checkpoint (kinds.py)."""
