"""`python -m lm.sample --workdir DIR --prompt "ROMEO:" [...]`: samples from a checkpoint. The model is rebuilt
from the workdir alone (config and tokenizer travel in the checkpoint) and only its parameters are restored,
onto a mesh of `--tensor` devices, in the weight format `--quantize` names."""

from absl import flags

from lm.sample.formats import WEIGHT_FORMATS

flags.DEFINE_string("workdir", None, "Run directory holding checkpoints.", required=True)
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_multi_string("prompt", None, "Text to continue (repeat the flag for several prompts).")
flags.DEFINE_string("prompt_file", "", "Prompts, one per line: plain text or JSON objects with a 'prompt'.")
flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per sample.")
flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 is greedy.")
flags.DEFINE_integer("top_k", 50, "Sample among the k most likely tokens; 0 turns it off.")
flags.DEFINE_float("top_p", 1.0, "Sample among the most likely tokens whose mass reaches p; 1 turns it off.")
flags.DEFINE_integer("num_samples", 1, "Samples per prompt.")
flags.DEFINE_multi_string("stop", None, "Stop a sample at this text (repeatable); the end-of-text id always stops.")
flags.DEFINE_enum("format", "text", ["text", "jsonl"], "Output: text, or one JSON object per sample.")
flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives the same samples.")
flags.DEFINE_enum("quantize", "none", list(WEIGHT_FORMATS),
                  "Weights for sampling: as saved, bfloat16, int8 (weight-only, a scale per output channel), "
                  "or int8_dynamic (int8 weights and per-token int8 activations: faster on a CPU).")
flags.DEFINE_integer("tensor", 1, "Devices to split the model over (tensor parallel: heads, MLP, vocabulary).")
