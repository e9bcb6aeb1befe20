"""Where desired state comes from: files baked into the image (more sources follow)."""
