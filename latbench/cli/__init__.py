"""The `latbench` command line, one module per subcommand (.importlinter keeps this layering):

main            the parser and the dispatch; `latbench` runs `main.main`
run, summary, sweep, report, compare, sim, serve, submit, runs
                one subcommand each: `add_arguments(subparsers)` and `main(ns, console, err)`;
                none imports another
service_client  the HTTP client of a latbench service, for `submit` and `runs`
common          the exit-code table, the event loop and signals, the run flags, error lines
"""
