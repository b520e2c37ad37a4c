"""The campaign: its model, how a file is read into it, instance catalog, spec bundles, run params."""
