"""Trainers for the builtin models (run through ``python -m pipelines.train <target>``).

``common`` holds the shared machinery (seeding, checkpoints, LR schedule, EMA, progress and
loss logs); each target module (e.g. ``clip``) exposes ``add_arguments(parser)`` and
``main(args)``. Importing this package is cheap: trainers are imported lazily by the CLI.
"""
