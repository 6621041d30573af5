"""Ingestion: bringing a source's images (Instagram hashtag, local folder, zip or tar, the embedded demo) into
the raw store, data/raw/<name>/, by content hash with provenance. Raw files are written once, never changed."""
