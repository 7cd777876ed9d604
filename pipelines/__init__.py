"""Model layer of the studio: families, samplers, registry, procedural worlds, metrics.

Nothing here imports ``studio`` or ``gradio``; everything is usable from a script or a
notebook. Importing this package is cheap: heavy libraries (torch, diffusers) are imported
by the modules that need them.
"""
