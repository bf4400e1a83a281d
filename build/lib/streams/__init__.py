"""Faust stream processing: CDC records in; golden records, commands and change events out."""
