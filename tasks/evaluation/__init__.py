"""Evaluation: FID/KID (Inception), FD-DINOv2, precision/recall and the memorization audit of a run's
snapshots, the FID-over-kimg table, the best snapshot, and the read-once loader of the feature networks."""
