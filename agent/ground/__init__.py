"""Ground-side code: the planner's push/keygen/watch, board image building and booting,
CRD generation. Never installed in flight images (the image builder leaves it out)."""
