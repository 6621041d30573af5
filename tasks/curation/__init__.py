"""Curation: from the raw store to a curated dataset. Decoding and the cheap filters, the content detectors
(faces, text), near-duplicate removal, the per-image cache, rendering (crop, matte, resize), the manifest and
shards, and where the batches run (process pool or Dask). No training, no DVC here."""
