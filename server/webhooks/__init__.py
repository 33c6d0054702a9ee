"""Outbound webhooks: Standard Webhooks signing, the SSRF guard, and (elsewhere) delivery."""
