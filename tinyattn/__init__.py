"""tinyattn."""
