"""History beyond capture: undo (``audit_stream.history.undo``)."""
