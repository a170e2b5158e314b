"""The memory and disk tiers (see DESIGN.md); filled in by the serving-core work."""
