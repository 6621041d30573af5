"""Training: one run directory trained in stages from a curated dataset, with preemption handling, transfer
from a published network, and what a run shows in the Prefect UI. The GAN itself lives in models/."""
