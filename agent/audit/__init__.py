"""``sortie audit``: the board's security and determinism posture, in the spirit of the
CIS benchmarks and kube-bench. Facts are gathered from the machine (``gather``), judged
by pure rules (``rules``) into PASS / WARN / FAIL findings, each with its reason and
remedy (``findings``)."""
