"""Model flags (--teacher, --student)."""
