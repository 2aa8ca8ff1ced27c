"""Dataset flags (--dataset, --data_dir)."""
