"""Files copied into every bundle's ``runtime/`` directory (this __init__ is not copied)."""
