"""Local API: newline-delimited JSON over a unix socket (0600); no TCP port."""
