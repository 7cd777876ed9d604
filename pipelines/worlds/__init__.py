"""Procedural worlds: small synthetic image domains with captions, used to train and evaluate
the builtin models (see ``shapes`` for the Shapes world). Importing this package is cheap."""
