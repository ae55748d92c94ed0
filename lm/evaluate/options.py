"""`python -m lm.evaluate --workdir DIR [--step N] [--split validation|train] [--data_path P] [--cache_dir D]`:
one JSON line of the checkpoint's loss, perplexity and bits per byte (which data it scores goes to stderr).
`--tasks FILES` scores downstream tasks instead (tasks.py: minimal pairs, multiple choice, cloze), each file read
a part at a time with progress on stderr: one JSON line of each task's metrics and the mean accuracy.
`--harness TASKS` runs lm-evaluation-harness tasks (harness.py): one JSON line of the harness's results."""

from absl import flags

from lm.data.documents import DECODE_ERRORS, SPLITS

flags.DEFINE_string("workdir", None, "Run directory holding checkpoints.", required=True)
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_enum("split", "validation", SPLITS, "Split to evaluate.")
flags.DEFINE_string("data_path", "", "Text to evaluate on, as config.data.path takes it (default: the run's data).")
flags.DEFINE_enum("decode_errors", None, list(DECODE_ERRORS), "Bytes of --data_path that are not UTF-8: strict "
                  "(stop, naming the file and byte) or replace (read as U+FFFD); default: the run's setting.")
flags.DEFINE_string("cache_dir", "", "Folder for the prepared data (default: ~/.cache/lm/data).")
flags.DEFINE_string("tasks", "", "Downstream tasks to score: comma-separated JSONL files, folders of them or globs.")
flags.DEFINE_integer("batch_size", 0, "Rows per scoring batch (default: the run's training batch size).")
flags.DEFINE_string("harness", "", "lm-evaluation-harness tasks to run, comma-separated (pip install -e '.[eval]').")
flags.DEFINE_string("harness_include", "", "A folder of harness task YAML files (local tasks) to add to its own.")
flags.DEFINE_integer("limit", None, "With --harness: at most this many examples per task.")
