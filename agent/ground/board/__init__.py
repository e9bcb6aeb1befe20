"""Board images: build a Debian-based image per board, boot it in QEMU (``sortie board``)."""
