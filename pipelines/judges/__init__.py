"""Judges: classical (numpy) readers that check whether an image shows what its prompt asked
for, one module per procedural world (see ``shapes``). Importing this package is cheap."""
