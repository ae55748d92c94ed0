"""`python -m lm.convert`: Hugging Face models in and out of lm workdirs (command.py; hf.py reads and writes
the folders, gpt2.py and llama.py map each family)."""
