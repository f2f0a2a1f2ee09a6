"""The performance harness: latbench and its peers, side by side, scored against server truth.

`python -m bench --help`. See docs/performance.md for the latest table and the command.
"""
