"""Tokenizers: SentencePiece models trained on a run's data (sentencepiece.py), GPT-2's byte-level BPE for
imported weights (gpt2.py), and reading either back from a checkpoint (kinds.py)."""
