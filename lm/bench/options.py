"""`python -m lm.bench --config configs/NAME.py [--profile] [--depths 12,48] [--decode] [--data] [--tasks FILES]`:
figures of the train step (compile time, step time, tokens/s, MFU, where the time goes), or of decoding, of the
input pipeline, or of downstream-task scoring, printed for the config's model with random weights."""

from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Run config file, e.g. configs/gpt2_124m.py.")
flags.DEFINE_integer("repeats", 5, "Timed steps (after one warm-up).")
flags.DEFINE_bool("profile", False, "Also trace the step and print its op time by model part.")
flags.DEFINE_bool("decode", False, "Measure sampling (decode) speed instead of the train step.")
flags.DEFINE_bool("data", False, "Measure the input pipeline's speed against the train step's.")
flags.DEFINE_string("decode_batches", "1,8", "Decode: batch sizes.")
flags.DEFINE_integer("decode_tensor", 1, "Decode: devices to split the model over, as lm.sample --tensor "
                     "(a CPU host is made into that many devices).")
flags.DEFINE_string("decode_formats", "none,bfloat16,int8,int8_dynamic",
                    "Decode: weight formats (see lm.sample --quantize).")
flags.DEFINE_integer("prompt_len", 16, "Decode: prompt tokens.")
flags.DEFINE_integer("new_tokens", 128, "Decode: tokens generated per row.")
flags.DEFINE_string("tasks", "", "Measure downstream-task scoring (lm.evaluate --tasks) on these task files.")
flags.DEFINE_integer("task_examples", 100, "Tasks: examples of each task scored (0: all).")
flags.DEFINE_string("depths", "", "Also compare the step's compile time at these depths, e.g. 12,48.")
