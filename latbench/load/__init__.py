"""When each request is sent, and by whom: the load a spec asks for, spread over worker processes.

pacers   open-loop pacers (constant, Poisson, ramp): the intended offset of request n, and
         the phase (warm-up, measure, cool-down) it falls in
runner   splits the schedule over workers, stops and aborts them, hands each finished record
         to the run's sinks, turns a dead worker's in-flight requests into `lost` records
worker   one shard of the schedule (closed or open loop) on its own event loop, in its own
         process (`python -m latbench.load.worker`)
wire     the frames between runner and workers, and the compact record encoding they carry
eager    the workers' task factory: a request's bytes leave when it is sent (Python 3.11)
cpus     the CPUs this process may use (affinity mask, cgroup quota): the default worker count
"""

# No names are imported here: the workers run `python -m latbench.load.worker`, and a package
# that imported its own worker module would have Python load it twice (once under its name, once
# as __main__). Import from the modules: `from latbench.load.runner import Runner`.
