"""`python -m lm.convert`: Hugging Face models (GPT-2, Llama, Qwen2, Qwen3, Mistral) <-> `lm` workdirs, with no
network.

    python -m lm.convert --hf_dir DIR --workdir OUT      # config.json + safetensors (+ tokenizer) -> a workdir
    python -m lm.convert --workdir RUN --export DIR      # a workdir -> what transformers' from_pretrained loads

An export goes into a new or empty folder (--overwrite: replace its files of those names, keeping the others).
"""

from absl import flags

flags.DEFINE_string("workdir", None, "The lm workdir to write (import) or read (export).", required=True)
flags.DEFINE_string("hf_dir", "", "Import: a Hugging Face folder (config.json, safetensors, tokenizer files).")
flags.DEFINE_string("export", "", "Export: the folder to write config.json, model.safetensors and the tokenizer to.")
flags.DEFINE_bool("overwrite", False, "Export: into a folder that holds other files, replace the files an export "
                  "writes there (the others are kept).")
flags.DEFINE_integer("step", None, "Export: the checkpoint step (default: the latest).")
flags.DEFINE_bool("scan_layers", True, "Import: stack the layers for a scanned model.")
