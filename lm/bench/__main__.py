"""`python -m lm.bench --config configs/NAME.py`: compile time, step time, tokens/s, FLOPs and MFU of the train
step; `--decode` sampling, `--data` the input pipeline."""

from lm.cli import process

process.start()

from lm.bench import command  # noqa: E402  (JAX is imported from here on, in the process set up above)
from lm.cli import runner  # noqa: E402

runner.run(command.main)
