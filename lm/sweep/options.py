"""`python -m lm.sweep experiments/NAME.py [--root runs] [--dry_run] [--launcher slurm [--collect] [--wait]
[--partition P --time T ...]]`: the runs of an experiment here one after another, or as a SLURM job array
(experiment.py, slurm.py)."""

from absl import flags

from lm.sweep import slurm

flags.DEFINE_string("root", "runs", "Where the experiment's folder of runs goes.")
flags.DEFINE_bool("dry_run", False, "Print one `python -m lm.train` command per run instead of running them.")
flags.DEFINE_enum("launcher", "local", ["local", "slurm"], "Run here one after another, or submit to SLURM.")
flags.DEFINE_bool("collect", False, "slurm: gather the finished runs and say where the others stand; submit nothing.")
flags.DEFINE_bool("wait", False, "slurm: wait until the submitted runs end, then gather them.")
for _key, (_default, _meaning) in slurm.RESOURCES.items():
    (flags.DEFINE_integer if isinstance(_default, int) else flags.DEFINE_string)(
        _key, None, f"slurm: {_meaning} (over the experiment file's SLURM dict).")
