"""Developer tooling for the contract: the breaking-change gate and its helpers."""
