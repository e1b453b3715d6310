"""Files that outlive a run: checkpoints and weight files, and feature caches
(docs/design.md, "Checkpoints" and "Feature caches")."""
