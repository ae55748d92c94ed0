"""The work of `python -m lm.convert` (its usage and flags: options.py)."""

from collections.abc import Sequence

from absl import flags

from lm.convert.hf import export_hf, import_hf
from lm.errors import UserError


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.hf_dir and not f.export:
        c = import_hf(f.hf_dir, f.workdir, f.scan_layers)
        print(f"imported a {c.num_layers}-layer model (width {c.embed_dim}, vocab {c.vocab_size}) into {f.workdir}")
    elif f.export and not f.hf_dir:
        family = export_hf(f.workdir, f.export, f.step, f.overwrite)
        print(f"exported {f.workdir} to {f.export} as {family}")
    else:
        raise UserError("pass --hf_dir DIR (import into --workdir) or --export DIR (export --workdir)")
