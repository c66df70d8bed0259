"""How each variant of a network is produced: export (and, later, calibration, PTQ and QAT)."""
