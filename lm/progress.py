"""A progress line on the console for long one-off jobs (building a dataset, training a tokenizer)."""

import time


class Progress:
    """One console line, rewritten at most twice a second: 'LABEL: done of [at most] total MiB (note)'."""

    def __init__(self, label: str, total_bytes: int, at_most: bool = False):
        self.label, self.total, self.done, self.shown = label, total_bytes, 0, 0.0
        self.of = "of at most" if at_most else "of"

    def advance(self, nbytes: int, note: str = "") -> None:
        self.done += nbytes
        if time.time() - self.shown > 0.5 or self.done >= self.total:
            self.shown = time.time()
            note = f" ({note})" if note else ""
            print(f"\r  {self.label}: {self.done / 2**20:,.1f} {self.of} {self.total / 2**20:,.1f} MiB{note}", end="",
                  flush=True)

    def close(self) -> None:
        print(flush=True)
