"""The inventory machinery behind equipment.py (see its docstring for the map)."""
