"""S3: the layout of every key, access with retries, the attempt/commit protocol."""
