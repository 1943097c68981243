"""Tools for plugin authors: scaffold a plugin, print a family's mapping table, find where a model diverges."""
