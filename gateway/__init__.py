"""The gateway: verify, apply the signed policy, forward or refuse, audit (exchange issue)."""
