"""Container images: a verified, content-addressed store of OCI images."""
