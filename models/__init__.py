"""The GAN core: a plain torch library (torch, numpy, PIL only; never prefect, dvc, tasks or flows)."""
