"""Run folders in object storage: a run URL (s3://, gs://, az://, file://, a plain path) and its local cache."""
