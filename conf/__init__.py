"""Declarative side of alignflow: the config schema (one module per section), its loader and the YAML profiles.

Nothing is imported here: importing one section (alignflow.conf.base, ...) must not load the loader
and the whole schema with it (that made every conf module part of one import cycle).
"""
