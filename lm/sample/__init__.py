"""`python -m lm.sample`: text from a checkpoint (command.py) through one jitted decode loop with a KV cache
(generate.py), from weights as saved or in a sampling-only format, bfloat16 or int8 (weights.py)."""
