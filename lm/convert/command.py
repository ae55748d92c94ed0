"""`python -m lm.convert`: GPT-2 checkpoints in Hugging Face format <-> `lm` workdirs, with no network.

    python -m lm.convert --hf_dir DIR --workdir OUT      # config.json + model.safetensors -> a workdir
    python -m lm.convert --workdir RUN --export DIR      # a GPT-2-style workdir -> config.json + model.safetensors
"""

from collections.abc import Sequence

from absl import flags

from lm.convert.gpt2 import export_gpt2, import_gpt2
from lm.errors import UserError

flags.DEFINE_string("workdir", None, "The lm workdir to write (import) or read (export).", required=True)
flags.DEFINE_string("hf_dir", "", "Import: a folder with a GPT-2 config.json and model.safetensors.")
flags.DEFINE_string("export", "", "Export: the folder to write config.json and model.safetensors to.")
flags.DEFINE_integer("step", None, "Export: the checkpoint step (default: the latest).")
flags.DEFINE_bool("scan_layers", True, "Import: stack the layers for a scanned model.")


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.hf_dir and not f.export:
        c = import_gpt2(f.hf_dir, f.workdir, f.scan_layers)
        print(f"imported a {c.num_layers}-layer GPT-2 (width {c.embed_dim}, vocab {c.vocab_size}) into {f.workdir}")
    elif f.export and not f.hf_dir:
        export_gpt2(f.workdir, f.export, f.step)
        print(f"exported {f.workdir} to {f.export}")
    else:
        raise UserError("pass --hf_dir DIR (import into --workdir) or --export DIR (export --workdir)")
