"""Access control: API keys, their scopes and rate limits, and the audit trail of their use."""
