"""Where arrays live: the device mesh and its logical-axis rules (mesh.py), parameters created or restored onto
it (placement.py), and what several processes share (processes.py)."""
