"""Load from many machines: agents run shards of a coordinator's schedule (docs/distributed.md).

protocol  the WebSocket's messages, the signed shard, the clock-sample arithmetic
pool      the coordinator's side: the endpoint, registration, clocks, a Channel per worker slot
agent     the agent's side (`latbench agent`): connect, answer pings, run and relay workers
"""

# No names are imported here: `latbench agent` and the runner import what they use from the
# modules, and a process that is not a coordinator never loads aiohttp's server for this.
