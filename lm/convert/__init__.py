"""`python -m lm.convert`: Hugging Face GPT-2 checkpoints in and out of lm workdirs (command.py; gpt2.py)."""
