"""Leaves every stage may import, the simulator included; they import nothing else of latbench.

errors    latbench's exceptions and the record's `ErrorKind`
dist      distributions of a number (latencies, token counts), for specs and the simulator
buckets   histogram boundaries (vLLM's and latbench's) and their counts
rxstamp   the kernel's receive stamps, and the event loop that can read them
child     a child process's life: start, wait until ready, stop
units     how a duration is written for people (one formatter for every report)
secrets   secrets kept in files (the target's API key, the service's token)
generated the command line of the scripts that generate committed files
lazy      package faces whose names are imported on first use
yamlfile  YAML read with limits (no aliases, 1 MiB, 32 levels): specs, configs, the simulator's
"""
