"""What every stage shares: the typed settings (settings.py: one model per params.yaml section, and `load`), the
output-folder checks (outdir.py), progress reporting to the CLI's bars (progress.py) and retry policies
(retry.py). Nothing stage-specific belongs here."""
