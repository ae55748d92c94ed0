"""`python -m lm.train --config configs/NAME.py --workdir DIR [--config.KEY=VALUE ...]` and the flags of a
multi-process run; the work is `lm.train.loop.train`."""

from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from lm import config as config_lib
from lm.backends import cpu_devices
from lm.errors import UserError
from lm.parallel import processes
from lm.train.loop import train

config_flags.DEFINE_config_file("config", None, "Run config file, e.g. configs/shakespeare_char.py.")
flags.DEFINE_string("workdir", None, "Directory for the tokenizer, checkpoints and metrics.")
flags.DEFINE_string("coordinator_address", "", "Multi-process: host:port of process 0 (all processes).")
flags.DEFINE_integer("num_processes", 1, "Multi-process: how many processes take part.")
flags.DEFINE_integer("process_id", 0, "Multi-process: this process's index, from 0.")
flags.DEFINE_bool("distributed", False, "Multi-process with the cluster auto-detected (SLURM, TPU, MPI).")


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.config is None or not f.workdir:
        raise UserError("usage: python -m lm.train --config configs/NAME.py --workdir DIR")
    config_lib.validate(f.config)
    cpu_devices.split_cpu(f.config.mesh, f.config.train.batch_size)
    processes.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id, f.distributed)
    train(f.config, f.workdir)
