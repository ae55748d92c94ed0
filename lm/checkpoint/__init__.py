"""Orbax checkpoints: writing and restoring a run's state (manager.py), checksums and damage (integrity.py),
reading a workdir without writing to it (reader.py), and whether a checkpoint serves a config
(compatibility.py: resume and init_from)."""
