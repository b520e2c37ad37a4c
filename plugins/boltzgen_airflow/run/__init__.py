"""A run in S3: staged inputs, shard and filtering descriptors, the run manifest and results."""
