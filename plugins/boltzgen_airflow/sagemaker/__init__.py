"""SageMaker Processing: hook, request building, the stage operators, their trigger and links."""
