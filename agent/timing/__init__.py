"""Budget modes beyond CFS: scheduling policies and the major-frame window timeline."""
