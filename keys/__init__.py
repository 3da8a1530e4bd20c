"""Agency codes, the cipher department CA, agency keys, certificates and the directory."""
