"""drp processing: algorithms, tasks, the pipeline executor and the ``drp`` command.

Importing this package is cheap; heavy modules are imported where they are used.
"""
