"""`python -m lm.prepare`: a config's corpus tokenized into prepared token shards ahead of training."""
