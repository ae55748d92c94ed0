"""The work of `python -m lm.train` (its usage and flags: options.py): the run config built once, the devices
set up, then `lm.train.loop.train`."""

from collections.abc import Sequence

from absl import flags

from lm import config as config_lib
from lm.backends import cpu_devices
from lm.errors import UserError
from lm.parallel import processes
from lm.train.loop import train


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.print_config:
        run = config_lib.build(f.config if f.config is not None else config_lib.defaults())
        print("\n".join(config_lib.lines(run)))
        return
    if f.config is None or not f.workdir:
        raise UserError("usage: python -m lm.train --config configs/NAME.py --workdir DIR (--help says more)")
    run = config_lib.build(f.config)
    cpu_devices.split_cpu(cpu_devices.cpu_device_count(run.mesh, run.train.batch_size, cpu_devices.cores()))
    processes.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id, f.distributed)
    train(run, f.workdir)
