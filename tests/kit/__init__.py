"""What the tests share: running `latbench` as a user does (`cli`), the service in a child
process (`service`), a hostile server (`hostile`), real Prometheus parts (`promql`), the e2e
stage's real vLLM (`vllm`), and the repository's paths (`paths`)."""
