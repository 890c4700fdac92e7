"""One module per command family, each one call from the CLI: run (score, segment,
fewshot), calibrate, evaluate (eval), report."""
