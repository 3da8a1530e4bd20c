"""The agency desktop agent and the cipherpost command line."""
