"""A catalogue of bad inputs and faults: every case asserts the exact sentence, the exit status,
that no input changed and that no output was half-written (see ``harness``)."""
