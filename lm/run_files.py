"""What a run's workdir holds, each name defined here only: readers (the sampler, evaluator, exporter, sweeps,
plots) and the trainer find a run's files by these names."""

CHECKPOINTS = "checkpoints"  # one folder per saved step (lm/checkpoint/manager.py)
METRICS = "metrics.jsonl"  # one JSON record per logged step and evaluation (lm/train/metrics.py)
EVENTS = "events"  # TensorBoard's event files
SUMMARY = "summary.json"  # written when a run reaches its last step; lm.sweep skips runs that have one
CONFIG = "config.json"  # the resolved run config, written at every start, for people and tools to read
TOKENIZER = "tokenizer.json"  # a fresh run's tokenizer, for the other processes and a restart before step 1
LOCK = "lock"  # held by the trainer while it runs (lm/train/workdir.py)
