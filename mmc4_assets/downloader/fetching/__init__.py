"""Fetching: the HTTP client, the address guard and the per-host circuit breaker."""
