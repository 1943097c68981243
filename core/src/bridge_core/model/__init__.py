"""The model contract a family implements: bridge, stock decoder, provider, config translation, mapping set."""
