"""python -m lm.train --config configs/NAME.py --workdir DIR [--config.SECTION.KEY=VALUE ...]

Trains a decoder-only Transformer on the run config's data, evaluating and checkpointing as it goes; rerun the same
command to resume from the newest checkpoint. The run config's keys are overridden on the command line, e.g.
--config.train.steps=500 --config.optim.lr=3e-4 --config.model.num_layers=6; `--print_config` prints every key of
the resolved config with its value and meaning, and exits (with no --config: every key's default). The resolved
config is also written to WORKDIR/config.json at each start. Several processes (hosts) train one run with
--coordinator_address, --num_processes and --process_id, or --distributed under SLURM."""

from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "The run config file, e.g. configs/shakespeare_char.py.")
flags.DEFINE_string("workdir", None, "The run's folder: tokenizer, checkpoints, metrics; rerun with it to resume.")
flags.DEFINE_bool("print_config", False, "Print every key of the resolved run config with its meaning; train nothing.")
flags.DEFINE_string("coordinator_address", "", "Multi-process: host:port of process 0 (all processes).")
flags.DEFINE_integer("num_processes", 1, "Multi-process: how many processes take part.")
flags.DEFINE_integer("process_id", 0, "Multi-process: this process's index, from 0.")
flags.DEFINE_bool("distributed", False, "Multi-process with the cluster auto-detected (SLURM, TPU, MPI).")
