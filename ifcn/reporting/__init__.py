"""What a person reads: the report, its plots and pictures, and the small files they come from."""
